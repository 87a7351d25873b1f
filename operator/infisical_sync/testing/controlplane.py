"""A real, local Kubernetes control plane (etcd + kube-apiserver), started like envtest.

kube-apiserver is built once from the Go module proxy (see tests/controlplane/gobuild*) and cached
under the user's cache directory keyed by version; etcd is Debian's ``etcd-server`` binary.
INFISICAL_SYNC_KUBERNETES chooses which supported Kubernetes runs (the oldest by default). Both
run on free loopback ports with a throwaway PKI, RBAC authorization and an admin client cert in
``system:masters``. No kubelet, no controllers: enough for CRDs, RBAC, watches and an operator.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infisical_sync.testing.certs import CertificateAuthority, service_account_keys

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_DIR = REPO_ROOT / "tests" / "controlplane"


@dataclass(frozen=True)
class KubernetesRelease:
    """One supported Kubernetes minor, at the patch release its Go module pins."""

    version: str  # as the release tags it: v1.34.4
    module_dir: Path  # the Go module that builds it

    @property
    def minor(self) -> str:
        return ".".join(self.version.lstrip("v").split(".")[:2])


# The oldest and newest supported minors (the chart's kubeVersion range): CI runs both.
KUBERNETES_RELEASES = (
    KubernetesRelease("v1.34.4", BUILD_DIR / "gobuild"),
    KubernetesRelease("v1.37.2", BUILD_DIR / "gobuild-1.37"),
)
KUBERNETES_ENV = "INFISICAL_SYNC_KUBERNETES"


def kubernetes_release(environ: Mapping[str, str] = os.environ) -> KubernetesRelease:
    """The release named by INFISICAL_SYNC_KUBERNETES (a minor such as 1.37, or v1.37 or the
    full version), the oldest supported one when it is unset or empty."""
    wanted = environ.get(KUBERNETES_ENV, "").strip()
    if not wanted:
        return KUBERNETES_RELEASES[0]
    for release in KUBERNETES_RELEASES:
        if wanted.lstrip("v") in (release.minor, release.version.lstrip("v")):
            return release
    choices = ", ".join(release.minor for release in KUBERNETES_RELEASES)
    raise ControlPlaneError(f"{KUBERNETES_ENV}={wanted!r} is not one of: {choices}")


@dataclass(frozen=True)
class HelmRelease:
    version: str  # v3.19.5
    module_dir: Path

    @property
    def major(self) -> int:
        return int(self.version.lstrip("v").split(".")[0])

    @property
    def package(self) -> str:
        return f"helm.sh/helm/v{self.major}"


# The chart tests run on every supported Helm major.
HELM_RELEASES = {
    3: HelmRelease("v3.19.5", BUILD_DIR / "helmbuild"),
    4: HelmRelease("v4.3.1", BUILD_DIR / "helm4build"),
}
COREDNS_VERSION = "v1.14.7"  # pinned in tests/controlplane/corednsbuild/go.mod
COREDNS_MODULE_DIR = BUILD_DIR / "corednsbuild"
ACTIONLINT_VERSION = "v1.7.12"  # pinned in tests/controlplane/actionlintbuild/go.mod
ACTIONLINT_MODULE_DIR = BUILD_DIR / "actionlintbuild"
CRD_DIR = REPO_ROOT / "deploy" / "crds"
RBAC_RULES = REPO_ROOT / "deploy" / "helm" / "infisical-sync" / "files" / "rbac-rules.yaml"
CLUSTER_IDENTITY_RULES = RBAC_RULES.with_name("cluster-identity-rules.yaml")
# Added by the chart only with rbac.secretWrites=true (the import modes).
RBAC_SECRET_WRITES = RBAC_RULES.with_name("rbac-secret-writes.yaml")
RBAC_LEASES = RBAC_RULES.with_name("rbac-leader-election.yaml")
# Added by the chart only with rbac.kubernetesAuth=true (TokenRequest for kubernetes-auth).
RBAC_KUBERNETES_AUTH = RBAC_RULES.with_name("rbac-kubernetes-auth.yaml")
OPERATOR_USER = "infisical-sync-operator"
STATE_FILE_NAME = "controlplane.json"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: the first address of SERVICE_CIDR
KUBERNETES_SERVICE_FQDN = "kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infisical-sync"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONTROL_PLANE_COMMANDS = ("kube-apiserver",)
NODE_COMMANDS = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")


def _recipe_key(module_dir: Path, flags: list[str]) -> str:
    """A short hash of what a build depends on, so a changed recipe never reuses old binaries."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "tools.go"):
        path = module_dir / name
        if path.exists():
            digest.update(path.read_bytes())
    digest.update("\0".join(flags).encode())
    return digest.hexdigest()[:10]


def kubernetes_ldflags(version: str) -> list[str]:
    """Stamp the version like Kubernetes' own release builds do: without it the binaries report
    v0.0.0-master, which `kubectl version` and Helm's kubeVersion checks cannot parse."""
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    return [
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in stamps.items()
    ]


def kube_binaries_dir(release: KubernetesRelease) -> Path:
    """Where `release`'s binaries are cached: keyed by version and build recipe."""
    key = _recipe_key(release.module_dir, kubernetes_ldflags(release.version))
    return cache_dir() / f"kubernetes-{release.version}-{key}"


def ensure_kube_binaries(
    *, with_kubectl: bool = False, node: bool = False, release: KubernetesRelease | None = None
) -> dict[str, Path]:
    """Build (once) and return the cached kube-apiserver (kubectl, node binaries) of `release`
    (by default the one INFISICAL_SYNC_KUBERNETES names), stamped with its version."""
    release = release or kubernetes_release()
    target = kube_binaries_dir(release)
    names = list(CONTROL_PLANE_COMMANDS)
    names += ["kubectl"] if with_kubectl else []
    names += list(NODE_COMMANDS) if node else []
    wanted = {name: target / name for name in names}
    if all(path.exists() for path in wanted.values()):
        return wanted
    target.mkdir(parents=True, exist_ok=True)
    # A lock so that a test run and the demo started together build only once.
    with open(target / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [name for name, path in wanted.items() if not path.exists()]
        if missing:
            packages = [f"k8s.io/kubernetes/cmd/{name}" for name in missing]
            _go_build(
                release.module_dir,
                packages,
                missing,
                target,
                release.version,
                ldflags=kubernetes_ldflags(release.version),
            )
    return wanted


def helm_ldflags(release: HelmRelease) -> list[str]:
    """Stamp helm like its own Makefile does: unstamped, `helm version` says only v3.x / v4.x."""
    flags = [f"-X {release.package}/internal/version.version={release.version}"]
    if release.major == 3:
        # Helm 3 also takes the Kubernetes version that `helm template` and `helm lint` assume
        # from ldflags (its Makefile: the client-go it was built with, v0.N -> 1.N); unstamped it
        # assumes v1.20.0, which the chart's kubeVersion refuses. Helm 4 reads client-go's
        # version from the binary's build info instead.
        go_mod = (release.module_dir / "go.mod").read_text()
        found = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", go_mod, re.MULTILINE)
        if found is None:
            raise ControlPlaneError(f"no k8s.io/client-go in {release.module_dir / 'go.mod'}")
        for package in ("pkg/chartutil", "pkg/lint/rules"):
            flags += [
                f"-X {release.package}/{package}.k8sVersionMajor=1",
                f"-X {release.package}/{package}.k8sVersionMinor={found.group(1)}",
            ]
    return flags


def ensure_helm(major: int = 3) -> Path:
    """Build (once) and return the cached helm CLI of that major, for chart tests."""
    release = HELM_RELEASES[major]
    return _ensure_built(
        release.module_dir,
        f"{release.package}/cmd/helm",
        "helm",
        release.version,
        ldflags=helm_ldflags(release),
    )


def ensure_all_binaries() -> None:
    """What `make deps` builds: every supported Kubernetes with kubectl (the node binaries only
    for the oldest, which the node tier runs), every Helm major, CoreDNS."""
    oldest, *newer = KUBERNETES_RELEASES
    ensure_kube_binaries(with_kubectl=True, node=True, release=oldest)
    for release in newer:
        ensure_kube_binaries(with_kubectl=True, release=release)
    for major in HELM_RELEASES:
        ensure_helm(major)
    ensure_coredns()


def ensure_coredns() -> Path:
    """Build (once) and return a CoreDNS with the kubernetes plugin: the test node's cluster DNS."""
    return _ensure_built(
        COREDNS_MODULE_DIR, ".", "coredns", COREDNS_VERSION, tags="", env={"CGO_ENABLED": "0"}
    )


def ensure_actionlint() -> Path:
    """Build (once) and return actionlint, the linter the tests run on .github/workflows."""
    return _ensure_built(
        ACTIONLINT_MODULE_DIR,
        "github.com/rhysd/actionlint/cmd/actionlint",
        "actionlint",
        ACTIONLINT_VERSION,
        # What `actionlint -version` prints (a build outside a release has no version of its own).
        ldflags=[f"-X github.com/rhysd/actionlint.version={ACTIONLINT_VERSION}"],
        tags="",
        env={"CGO_ENABLED": "0"},
    )


def _ensure_built(
    module_dir: Path,
    package: str,
    command: str,
    version: str,
    *,
    ldflags: Sequence[str] = (),
    tags: str = "providerless",
    env: dict[str, str] | None = None,
) -> Path:
    """One command built from its Go module, cached under a key of the build recipe."""
    target = cache_dir() / f"{command}-{version}-{_recipe_key(module_dir, list(ldflags))}"
    binary = target / command
    if binary.exists():
        return binary
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            _go_build(
                module_dir,
                [package],
                [command],
                target,
                version,
                ldflags=ldflags,
                tags=tags,
                env=env,
            )
    return binary


def _go_build(
    module_dir: Path,
    packages: list[str],
    commands: list[str],
    target: Path,
    version: str,
    *,
    ldflags: Sequence[str] = (),
    tags: str = "providerless",
    env: dict[str, str] | None = None,
) -> None:
    go = shutil.which("go")
    if go is None:
        raise ControlPlaneError("the Go toolchain is needed to build kube-apiserver: install Go")
    staging = Path(tempfile.mkdtemp(prefix="go-build-", dir=target))
    print(
        f"building {', '.join(commands)} {version} from the Go module proxy "
        "(first run only, a few minutes)...",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    result = subprocess.run(
        [
            go,
            "build",
            "-tags",
            tags,
            "-trimpath",
            "-ldflags=" + " ".join(["-s", "-w", *ldflags]),
            "-o",
            str(staging),
            *packages,
        ],
        cwd=module_dir,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ControlPlaneError(f"go build failed:\n{result.stderr[-4000:]}")
    for name in commands:
        (staging / name).replace(target / name)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"built in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)


def find_etcd() -> Path:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found is None:
        raise ControlPlaneError("etcd not found: install Debian's etcd-server (`make deps`)")
    return Path(found)


def _die_with_parent() -> None:
    # Children get SIGKILL if the Python process that started them dies without cleaning up.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class ControlPlane:
    """etcd + kube-apiserver in a temp directory. Use as a context manager or start()/stop()."""

    detached: bool = False  # survive this process (the `controlplane up` command)
    # Set by the test node (testing.node): the node's address inside its network namespace. The
    # API server then advertises it (the `kubernetes` Service points there), authorizes kubelets
    # (Node, NodeRestriction), admits service accounts, and reaches kubelets through the egress
    # proxy on `egress_socket` instead of dialing the node's address from this namespace.
    node_ip: str = ""
    release: KubernetesRelease = field(default_factory=kubernetes_release)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="infisical-cp-")))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""
    port: int = 0

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        binaries = ensure_kube_binaries(release=self.release)
        etcd = find_etcd()
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority("infisical-sync-kube-ca")
        self.ca_file.write_bytes(ca.cert_pem)
        hosts = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"]
        if self.node_ip:
            hosts += [self.node_ip, SERVICE_IP, "kubernetes.default", KUBERNETES_SERVICE_FQDN]
        serving_cert, serving_key = ca.issue_server(hosts).write(pki, "apiserver")
        self._admin = ca.issue_client("admin", "system:masters")
        self._admin.write(pki, "admin")
        self._ca = ca
        sa_pub, sa_key = service_account_keys().write(pki, "service-account")

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--log-level=warn",
            ],
        )
        self._wait_for(f"http://127.0.0.1:{etcd_port}/health", "etcd", timeout=30)

        self.url = f"https://127.0.0.1:{api_port}"
        self.port = api_port
        self._spawn(
            "kube-apiserver",
            [
                str(binaries["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={pki}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={self.ca_file}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-account-issuer=https://{KUBERNETES_SERVICE_FQDN}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--v=0",
                *self._audit_flags(),
                *(self._node_flags(pki) if self.node_ip else self._standalone_flags()),
            ],
        )
        self._wait_for(f"{self.url}/readyz", "kube-apiserver", timeout=90)
        self._write_kubeconfig(self.kubeconfig, "admin", self._admin.cert_pem, self._admin.key_pem)

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_flags(self) -> list[str]:
        # Single-Secret reads only, at Metadata level (who read which Secret, never its data):
        # tests count what the operator reads.
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\n"
            "kind: Policy\n"
            "omitStages: [RequestReceived]\n"
            "rules:\n"
            "- level: Metadata\n"
            "  verbs: [get]\n"
            '  resources: [{group: "", resources: [secrets]}]\n'
            "- level: None\n"
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def secret_reads(self, namespace: str, name: str, user: str) -> int:
        """How many times `user` has read (GET) the Secret so far, per the audit log."""
        if not self.audit_log.exists():
            return 0
        count = 0
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if (
                event.get("verb") == "get"
                and (event.get("user") or {}).get("username") == user
                and (ref.get("namespace"), ref.get("name")) == (namespace, name)
            ):
                count += 1
        return count

    @staticmethod
    def _standalone_flags() -> list[str]:
        # No kubelet: nothing would serve the `kubernetes` endpoints or service-account tokens.
        return [
            "--advertise-address=127.0.0.1",
            "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",
            "--disable-admission-plugins=ServiceAccount",
        ]

    def _node_flags(self, pki: Path) -> list[str]:
        egress = self.workdir / "egress-selector.yaml"
        egress.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "apiserver.k8s.io/v1beta1",
                    "kind": "EgressSelectorConfiguration",
                    "egressSelections": [
                        {
                            "name": "cluster",
                            "connection": {
                                "proxyProtocol": "HTTPConnect",
                                "transport": {"uds": {"udsName": str(self.egress_socket)}},
                            },
                        }
                    ],
                }
            )
        )
        kubelet_cert, kubelet_key = self._ca.issue_client(
            "kube-apiserver-kubelet-client", "system:masters"
        ).write(pki, "kubelet-client")
        return [
            f"--advertise-address={self.node_ip}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--egress-selector-config-file={egress}",
            f"--kubelet-client-certificate={kubelet_cert}",
            f"--kubelet-client-key={kubelet_key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    @property
    def egress_socket(self) -> Path:
        return self.workdir / "egress.sock"

    @property
    def ca(self) -> CertificateAuthority:
        return self._ca

    def kubeconfig_for_user(
        self, user: str, group: str | None = None, *, server: str | None = None
    ) -> Path:
        """A kubeconfig authenticating as `user` with a client cert: RBAC decides what it may do.
        `server` overrides the URL (the test node reaches the API server at its own address)."""
        pair = self._ca.issue_client(user, group)
        path = self.workdir / f"kubeconfig-{user.replace(':', '-')}"
        self._write_kubeconfig(path, user, pair.cert_pem, pair.key_pem, server=server)
        return path

    def _write_kubeconfig(
        self, path: Path, user: str, cert: bytes, key: bytes, *, server: str | None = None
    ) -> None:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority-data": b64(self.ca_file.read_bytes()),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.processes[name] = spawn_logged(
            self.workdir, name, argv, die_with_parent=not self.detached
        )

    def _admin_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        pki = self.workdir / "pki"
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        return context

    def server_version(self) -> str:
        """The gitVersion the running API server reports on /version."""
        with urllib.request.urlopen(  # noqa: S310 - our own https URL
            f"{self.url}/version", timeout=5, context=self._admin_tls()
        ) as response:
            return str(json.load(response)["gitVersion"])

    def _wait_for(self, url: str, name: str, timeout: float) -> None:
        context = self._admin_tls() if url.startswith("https") else None
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{name} not ready after {timeout:.0f}s ({last_error}):\n{self.log_tail(name)}"
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        return log_tail(self.workdir, name, lines)

    def stop(self) -> None:
        # apiserver first, so it does not spin on a vanished etcd. The directory goes also when
        # a second Ctrl-C interrupts the wait (the processes die with this one anyway).
        try:
            for name in ("kube-apiserver", "etcd"):
                process = self.processes.pop(name, None)
                if process is not None:
                    stop_process(process)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def state(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "kubeconfig": str(self.kubeconfig),
            "url": self.url,
            "pids": {name: process.pid for name, process in self.processes.items()},
        }


def spawn_logged(
    workdir: Path,
    name: str,
    argv: list[str],
    *,
    die_with_parent: bool = True,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A daemon in a session of its own, logging to workdir/<name>.log."""
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent if die_with_parent else None,
        cwd=cwd,
    )
    log.close()
    return process


def log_tail(workdir: Path, name: str, lines: int = 30) -> str:
    path = workdir / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM its process group, then SIGKILL after 15 s. Never raises."""
    _terminate(process.pid)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        _kill(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def api_client(kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]


def install_crds(kubeconfig: Path, crd_dir: Path = CRD_DIR, timeout: float = 30) -> list[str]:
    """Create or replace every CRD in crd_dir and wait until each is Established."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.ApiextensionsV1Api(api_client(kubeconfig))
    names: list[str] = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            name = document["metadata"]["name"]
            try:
                api.create_custom_resource_definition(document)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = api.read_custom_resource_definition(name)
                assert current.metadata is not None
                document["metadata"]["resourceVersion"] = current.metadata.resource_version
                api.replace_custom_resource_definition(name, document)
            names.append(name)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = api.read_custom_resource_definition(name)
            found = crd.status.conditions if crd.status else None
            conditions = {c.type: c.status for c in (found or [])}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.1)
    return names


def grant_operator_rbac(kubeconfig: Path, user: str = OPERATOR_USER) -> None:
    """Bind the chart's default rules and the cluster-identity read (nothing more) to `user`."""
    rules = yaml.safe_load(RBAC_RULES.read_text()) + yaml.safe_load(
        CLUSTER_IDENTITY_RULES.read_text()
    )
    grant_cluster_role(kubeconfig, user, rules)


def grant_secret_writes(kubeconfig: Path, namespace: str, user: str = OPERATOR_USER) -> None:
    """What rbac.secretWrites=true adds, as the chart's namespaced mode renders it: a Role and
    RoleBinding in `namespace` only."""
    _grant_in_namespace(
        kubeconfig,
        namespace,
        user,
        f"{user}-secret-writes",
        yaml.safe_load(RBAC_SECRET_WRITES.read_text()),
        {"verb": "patch", "resource": "secrets"},
    )


def grant_kubernetes_auth(
    kubeconfig: Path,
    namespace: str,
    user: str = OPERATOR_USER,
    service_account_names: list[str] | None = None,
) -> None:
    """What rbac.kubernetesAuth=true adds, as the chart's namespaced mode renders it: create on
    serviceaccounts/token in `namespace` only; for the named service accounts only with
    `service_account_names` (rbac.kubernetesAuthServiceAccountNames)."""
    rules = yaml.safe_load(RBAC_KUBERNETES_AUTH.read_text())
    probe = {"verb": "create", "resource": "serviceaccounts", "subresource": "token"}
    if service_account_names:
        rules[-1]["resourceNames"] = service_account_names
        probe["name"] = service_account_names[0]
    _grant_in_namespace(kubeconfig, namespace, user, f"{user}-kubernetes-auth", rules, probe)


def _grant_in_namespace(
    kubeconfig: Path,
    namespace: str,
    user: str,
    name: str,
    rules: list[dict[str, Any]],
    probe: dict[str, str],
) -> None:
    """A Role with `rules` bound to `user` in `namespace`; returns once the authorizer allows
    `probe` (resource attributes) there."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(api_client(kubeconfig))
    role: Any = {"metadata": {"name": name}, "rules": rules}
    binding: Any = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(namespace, binding)
    # The authorizer learns of new bindings from a watch: wait until it answers yes, so the
    # operator's first call is not refused.
    review: Any = {"spec": {"user": user, "resourceAttributes": {"namespace": namespace, **probe}}}
    authorization = client.AuthorizationV1Api(api_client(kubeconfig))
    deadline = time.monotonic() + 10
    while not _allowed(authorization.create_subject_access_review(review)):
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"{probe} in {namespace} not granted to {user}")
        time.sleep(0.05)


def grant_leader_election(kubeconfig: Path, namespace: str, user: str = OPERATOR_USER) -> str:
    """What the chart's leader election adds: a Role on Leases in `namespace`. Returns the
    RoleBinding's name (delete it to cut the access)."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(api_client(kubeconfig))
    name = f"{user}-leader-election"
    role: Any = {"metadata": {"name": name}, "rules": yaml.safe_load(RBAC_LEASES.read_text())}
    binding: Any = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(namespace, binding)
    return name


def _allowed(review: Any) -> bool:
    return bool(review.status and review.status.allowed)


def grant_cluster_role(kubeconfig: Path, user: str, rules: list[dict[str, Any]]) -> None:
    """A ClusterRole named after `user` with `rules`, bound to that user."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(api_client(kubeconfig))
    role: Any = {"metadata": {"name": user}, "rules": rules}
    binding: Any = {
        "metadata": {"name": user},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": user,
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding(binding)


# --- by hand: `infisical-sync controlplane up|down` --------------------------------------------


def state_path() -> Path:
    return cache_dir() / STATE_FILE_NAME


def up() -> dict[str, Any]:
    path = state_path()
    if path.exists():
        state: dict[str, Any] = json.loads(path.read_text())
        if all(_alive(pid) for pid in state["pids"].values()):
            return state
        down()
    plane = ControlPlane(detached=True)
    plane.start()
    install_crds(plane.kubeconfig)
    state = plane.state()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
    return state


def down() -> bool:
    path = state_path()
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    for name in ("kube-apiserver", "etcd"):
        pid = state["pids"].get(name)
        if pid:
            _terminate(pid)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                _kill(pid)
    shutil.rmtree(state["workdir"], ignore_errors=True)
    path.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie or a recycled pid is not our server.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    return False


@contextlib.contextmanager
def running() -> Iterator[ControlPlane]:
    with ControlPlane() as plane:
        install_crds(plane.kubeconfig)
        yield plane
