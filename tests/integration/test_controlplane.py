"""The local control plane is a real kube-apiserver: CRDs, validation, status, watches, RBAC."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from infisical_sync.testing.controlplane import ControlPlane, kubernetes_release

pytestmark = pytest.mark.controlplane
GROUP, VERSION = "infisical-sync.dev", "v1alpha1"


def connection(name: str, url: str = "https://infisical.example.com") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InfisicalConnection",
        "metadata": {"name": name},
        "spec": {"instanceUrl": url, "credentials": {"secretRef": {"name": "identity"}}},
    }


def test_the_api_server_runs_the_chosen_kubernetes(control_plane: ControlPlane) -> None:
    """The version CI's pass was meant to test (INFISICAL_SYNC_KUBERNETES) is the one served."""
    assert control_plane.server_version() == kubernetes_release().version


def test_crds_are_established_and_defaults_apply(kube: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "infisicalconnections", connection("conn")
    )
    spec = created["spec"]
    assert spec["method"] == "machine-identity-universal-auth"
    assert spec["credentials"]["secretRef"]["clientIdKey"] == "clientId"
    assert spec["validationInterval"] == "5m"


WIDGETS = "widgets"
WIDGET_GROUP = "test.infisical-sync.dev"


@pytest.fixture(scope="module")
def widget_crd(kube: Any) -> str:
    """A placeholder CRD no operator watches: status subresource, schema, printer column."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{WIDGETS}.{WIDGET_GROUP}"},
        "spec": {
            "group": WIDGET_GROUP,
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": WIDGETS, "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"message": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }
    api = client.ApiextensionsV1Api(kube)
    api.create_custom_resource_definition(crd)
    for _ in range(100):
        conditions = (
            api.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []
        )
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            break
        time.sleep(0.1)
    return WIDGETS


def widget(name: str, size: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": f"{WIDGET_GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


def test_status_is_a_subresource(kube: Any, namespace: str, widget_crd: str) -> None:
    api = client.CustomObjectsApi(kube)
    api.create_namespaced_custom_object(WIDGET_GROUP, "v1", namespace, WIDGETS, widget("w"))
    # A status in the main resource is ignored...
    api.patch_namespaced_custom_object(
        WIDGET_GROUP, "v1", namespace, WIDGETS, "w", {"status": {"message": "x"}}
    )
    body = api.get_namespaced_custom_object(WIDGET_GROUP, "v1", namespace, WIDGETS, "w")
    assert body.get("status", {}).get("message") is None
    # ...and lands through /status.
    api.patch_namespaced_custom_object_status(
        WIDGET_GROUP, "v1", namespace, WIDGETS, "w", {"status": {"message": "ok"}}
    )
    body = api.get_namespaced_custom_object(WIDGET_GROUP, "v1", namespace, WIDGETS, "w")
    assert body["status"]["message"] == "ok"


def test_schema_rejects_a_bad_placeholder(kube: Any, namespace: str, widget_crd: str) -> None:
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            WIDGET_GROUP, "v1", namespace, WIDGETS, widget("bad", size=0)
        )
    assert caught.value.status == 422
    assert "spec.size" in json.loads(caught.value.body)["message"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda body: body["spec"].pop("instanceUrl"), "instanceUrl: Required value"),
        (lambda body: body["spec"].update(instanceUrl="not a url"), "spec.instanceUrl"),
        (lambda body: body["spec"].update(method="oidc"), 'Unsupported value: "oidc"'),
        (
            lambda body: body["spec"]["credentials"]["secretRef"].pop("name"),
            "secretRef.name: Required value",
        ),
        (
            lambda body: body["spec"].update(instanceUrl="http://infisical.example.com"),
            "instanceUrl must use https:// unless allowInsecureHttp is true",
        ),
        (
            lambda body: body["spec"].update(validationInterval="0s"),
            "validationInterval must be at least 30s",
        ),
        (
            lambda body: body["spec"].update(validationInterval="29s"),
            "validationInterval must be at least 30s",
        ),
    ],
)
def test_schema_rejects_bad_objects(kube: Any, namespace: str, mutate: Any, expected: str) -> None:
    body = connection("bad")
    mutate(body)
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "infisicalconnections", body
        )
    assert caught.value.status == 422
    assert expected in json.loads(caught.value.body)["message"]


def test_http_allowed_with_flag(kube: Any, namespace: str) -> None:
    body = connection("insecure", "http://127.0.0.1:8080")
    body["spec"]["allowInsecureHttp"] = True
    created = client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "infisicalconnections", body
    )
    assert created["spec"]["allowInsecureHttp"] is True


def test_watch_sees_added_modified_deleted(kube: Any, namespace: str, widget_crd: str) -> None:
    api = client.CustomObjectsApi(kube)
    seen: list[tuple[str, str]] = []
    # Start from the list's resourceVersion so that no event can slip in before the watch.
    start = api.list_namespaced_custom_object(WIDGET_GROUP, "v1", namespace, WIDGETS)

    def follow() -> None:
        stream = watch.Watch()
        for event in stream.stream(
            api.list_namespaced_custom_object,
            WIDGET_GROUP,
            "v1",
            namespace,
            WIDGETS,
            resource_version=start["metadata"]["resourceVersion"],
            timeout_seconds=20,
        ):
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            if event["type"] == "DELETED":
                stream.stop()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    api.create_namespaced_custom_object(WIDGET_GROUP, "v1", namespace, WIDGETS, widget("watched"))
    api.patch_namespaced_custom_object(
        WIDGET_GROUP, "v1", namespace, WIDGETS, "watched", {"spec": {"size": 2}}
    )
    api.delete_namespaced_custom_object(WIDGET_GROUP, "v1", namespace, WIDGETS, "watched")
    thread.join(timeout=25)
    assert [kind for kind, name in seen if name == "watched"] == ["ADDED", "MODIFIED", "DELETED"]


def test_rbac_is_enforced(control_plane: ControlPlane, namespace: str) -> None:
    from kubernetes import config

    nobody = config.new_client_from_config(
        config_file=str(control_plane.kubeconfig_for_user("nobody"))
    )
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(nobody).list_namespaced_secret(namespace)
    assert caught.value.status == 403


def secretsync(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"kubernetes": {"secrets": [{"name": "app"}]}},
        "destination": {"connectionRef": {"name": "conn"}, "projectId": "p", "environment": "prod"},
    }
    base.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SecretSync",
        "metadata": {"name": "s"},
        "spec": base,
    }


INFISICAL_SOURCE = {"connectionRef": {"name": "cloud"}, "projectSlug": "app", "environment": "prod"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"source": {"kubernetes": {"secrets": [{"name": "a"}]}, "infisical": INFISICAL_SOURCE}},
            "exactly one of source.kubernetes or source.infisical",
        ),
        ({"source": {}}, "exactly one of source.kubernetes or source.infisical"),
        ({"source": {"kubernetes": {}}}, "list at least one Secret or give a selector"),
        (
            {
                "destination": {
                    "connectionRef": {"name": "c"},
                    "projectId": "p",
                    "projectSlug": "s",
                    "environment": "prod",
                }
            },
            "exactly one of projectId or projectSlug",
        ),
        (
            {"destination": {"connectionRef": {"name": "c"}, "environment": "prod"}},
            "exactly one of projectId or projectSlug",
        ),
        ({"syncInterval": "5 minutes"}, "spec.syncInterval"),
        ({"syncInterval": "0s"}, "syncInterval must be at least 10s"),
        ({"syncInterval": "5s"}, "syncInterval must be at least 10s"),
        ({"syncInterval": "9999ms"}, "syncInterval must be at least 10s"),
        ({"deletionPolicy": "Orphan"}, "spec.deletionPolicy"),
        ({"syncOptions": {"keySchema": "PREFIX_"}}, "keySchema must contain {{secretKey}}"),
        ({"syncOptions": {"keySchema": "A:{{secretKey}}"}}, "keySchema may only add"),
        # Infisical refuses every key with a / in it: such a schema would skip every key.
        ({"syncOptions": {"keySchema": "team/{{secretKey}}"}}, "keySchema may only add"),
        ({"syncOptions": {"keySchema": "{{secretKey}}/x"}}, "keySchema may only add"),
        ({"syncOptions": {"keySchema": "{{ secretKey }}"}}, "keySchema must contain {{secretKey}}"),
        (
            {
                "source": {"kubernetes": {"secrets": [{"name": "a"}, {"name": "b"}]}},
                "syncOptions": {"initialSyncBehavior": "import-prioritize-source"},
            },
            "import modes with a Kubernetes source need exactly one listed Secret",
        ),
        (
            {
                "source": {"infisical": {**INFISICAL_SOURCE, "recursive": True}},
                "syncOptions": {"initialSyncBehavior": "import-prioritize-destination"},
            },
            "import modes cannot be combined with a recursive Infisical source",
        ),
        (
            {
                "destination": {
                    "connectionRef": {"name": "c"},
                    "projectId": "p",
                    "environment": "prod",
                    "secretPath": "no-slash",
                }
            },
            "spec.destination.secretPath",
        ),
    ],
)
def test_secretsync_rules_are_enforced_by_the_api_server(
    kube: Any, namespace: str, spec: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            GROUP, VERSION, namespace, "secretsyncs", secretsync(**spec)
        )
    assert caught.value.status == 422
    assert expected in json.loads(caught.value.body)["message"]


def test_the_minimum_intervals_are_accepted(kube: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    sync = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "secretsyncs", secretsync(syncInterval="10s", suspend=True)
    )
    body = connection("conn")
    body["spec"]["validationInterval"] = "30s"
    conn = api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "infisicalconnections", body
    )
    assert (sync["spec"]["syncInterval"], conn["spec"]["validationInterval"]) == ("10s", "30s")


@pytest.mark.parametrize(
    "schema", ["{{secretKey}}", "TEAM_{{secretKey}}_V1", "{{environment}}-{{secretKey}}"]
)
def test_key_schemas_infisical_accepts_are_accepted(kube: Any, namespace: str, schema: str) -> None:
    created = client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "secretsyncs", secretsync(syncOptions={"keySchema": schema})
    )
    assert created["spec"]["syncOptions"]["keySchema"] == schema


def test_secretsync_defaults(kube: Any, namespace: str) -> None:
    created = client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "secretsyncs", secretsync(suspend=True)
    )
    spec = created["spec"]
    assert spec["syncOptions"] == {
        "initialSyncBehavior": "overwrite-destination",
        "keySchema": "{{secretKey}}",
        "disableSecretDeletion": False,
    }
    assert (
        spec["autoSyncEnabled"],
        spec["syncInterval"],
        spec["deletionPolicy"],
        spec["dryRun"],
    ) == (True, "5m", "Retain", False)
    assert spec["destination"]["secretPath"] == "/"


def test_kubectl_explain_is_useful(control_plane: ControlPlane) -> None:
    import subprocess

    from infisical_sync.testing.controlplane import ensure_kube_binaries

    kubectl = str(ensure_kube_binaries(with_kubectl=True)["kubectl"])

    def explain(field: str) -> str:
        # The API server publishes CRD schemas to OpenAPI a few seconds after they are created.
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(
                [kubectl, "--kubeconfig", str(control_plane.kubeconfig), "explain", field],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0 or time.monotonic() > deadline:
                return " ".join(result.stdout.split())
            time.sleep(1)

    assert "Must contain {{secretKey}}" in explain("secretsync.spec.syncOptions.keySchema")
    assert "same namespace" in explain("infconn.spec.credentials.secretRef")
