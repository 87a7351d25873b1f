"""deploy/samples as the demo and the node tier apply them: in a namespace of their own and
pointed at their fake Infisical. Users apply the directory as it is (`kubectl apply -f
deploy/samples/`: namespace team-a, an instance on 127.0.0.1:8088)."""

from __future__ import annotations

import yaml

from infisical_sync.testing.controlplane import REPO_ROOT

SAMPLES = REPO_ROOT / "deploy" / "samples"
# The fake's seed: the project and identity the samples name. Not a Kubernetes object, so it
# lives outside deploy/samples (which must apply as a whole).
DEMO_SEED = REPO_ROOT / "deploy" / "demo" / "fake-infisical-seed.yaml"
SAMPLE_NAMESPACE = "team-a"
SAMPLE_URL = "http://127.0.0.1:8088"


def sample_manifests(namespace: str, instance_url: str, **replace: str) -> list[str]:
    """The samples' texts in file order, moved to `namespace` and pointed at `instance_url`,
    each `replace` old text swapped for new. The Namespace object is left out: callers make
    their namespace themselves."""
    texts = []
    for sample in sorted(SAMPLES.glob("*.yaml")):
        text = sample.read_text()
        if yaml.safe_load(text)["kind"] == "Namespace":
            continue
        text = text.replace(f"namespace: {SAMPLE_NAMESPACE}\n", f"namespace: {namespace}\n")
        text = text.replace(SAMPLE_URL, instance_url)
        for old, new in replace.items():
            text = text.replace(old, new)
        texts.append(text)
    return texts
