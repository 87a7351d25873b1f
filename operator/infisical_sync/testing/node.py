"""A real Kubernetes node for tests: containerd + runc + CNI + kubelet + kube-proxy in a network
namespace of its own, with kube-controller-manager and kube-scheduler beside the control plane.

Networking rule: everything with an address lives in a network namespace that the test run
creates. The node's address, its pod bridge and its pod CIDR exist only there; the machine's
own addresses, routes, iptables and ``ip_forward`` stay as they were. The namespace is joined
with ``nsenter --net`` (``ip netns exec`` would also remount ``/sys``, and the kubelet would
find no cgroup mounts). The API server on the machine's loopback is reached from the namespace
through a forwarder on the node's address (``netbridge``), and reaches the kubelet through an
HTTP CONNECT proxy on a Unix socket (its ``cluster`` egress), so no packet ever crosses.

Teardown leaves no process, mount, cgroup, network namespace or file outside the work
directory, and restores the host sysctls the kubelet rewrites. It also runs for a crashed
earlier run: each node records what it must undo in a state file under the cache directory.

Needs root and Debian's ``containerd``, ``runc``, ``containernetworking-plugins``,
``iptables`` (``make system-deps``); the Kubernetes binaries are built by
``ensure_kube_binaries(node=True)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infisical_sync.testing.controlplane import (
    ControlPlane,
    ControlPlaneError,
    api_client,
    cache_dir,
    ensure_coredns,
    ensure_kube_binaries,
    grant_cluster_role,
    log_tail,
    spawn_logged,
    stop_process,
)
from infisical_sync.testing.netbridge import NetBridge

NODE_SUBNET = "10.213.0.0/24"
NODE_IP = "10.213.0.2"
POD_CIDR = "10.213.1.0/24"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CNI_BIN_DIR = Path("/usr/lib/cni")
K8S_NAMESPACE = "k8s.io"  # containerd namespace of the CRI plugin

# Host sysctls the kubelet sets (setupKernelTunables) and that teardown puts back.
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# Paths outside the work directory that the node's daemons create whatever their flags say.
HOST_PATHS = (
    "/run/containerd",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/netns",
    "/var/run/netns",
    "/etc/cni",
    "/usr/libexec/kubernetes",  # flexvolume plugin dirs, should a flag be missed
)
REQUIRED_COMMANDS = (
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "nsenter",
    "ip",
    "iptables",
    "mount",
    "umount",
)


class NodeUnavailable(ControlPlaneError):
    """This machine cannot run the test node (not root, or a package is missing)."""


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise NodeUnavailable("the test node needs root (containerd, kubelet, namespaces)")
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    missing += [
        f"{CNI_BIN_DIR}/{plugin}"
        for plugin in ("bridge", "host-local", "loopback")
        if not (CNI_BIN_DIR / plugin).exists()
    ]
    if missing:
        raise NodeUnavailable(
            f"missing {', '.join(missing)}: install Debian's containerd, runc, "
            "containernetworking-plugins and iptables (`make system-deps`)"
        )


def _run(argv: list[str], *, check: bool = True, timeout: float = 60) -> str:
    """stdout of argv; on failure (exit code, timeout) raises if `check`, else returns ""."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        if check:
            raise ControlPlaneError(f"{' '.join(argv)} timed out after {timeout:.0f}s") from None
        return ""
    if not check and result.returncode != 0:
        return ""
    if check and result.returncode != 0:
        raise ControlPlaneError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def _read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    with contextlib.suppress(OSError):
        if path.read_text().strip() != value:
            path.write_text(value)


def _mountpoints() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].replace("\\040", " "))
    return points


def _unmount_under(prefix: str) -> None:
    """Unmount every mount at or below prefix, deepest first (lazily if busy)."""
    for _ in range(5):
        below = prefix.rstrip("/") + "/"
        targets = [p for p in _mountpoints() if p == prefix or p.startswith(below)]
        if not targets:
            return
        for target in sorted(targets, key=len, reverse=True):
            if subprocess.run(["umount", target], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _pids_matching(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _cgroup_dirs(name: str) -> list[Path]:
    """Every cgroup v1/v2 directory called `name` directly under a hierarchy root."""
    return _cgroup_dirs_matching(re.compile(re.escape(name)))


def _cgroup_dirs_matching(pattern: re.Pattern[str]) -> list[Path]:
    """Every cgroup directory whose name matches, directly under a hierarchy root."""
    root = Path("/sys/fs/cgroup")
    hierarchies = [root, *(d for d in root.iterdir() if d.is_dir())]
    return [
        entry
        for hierarchy in hierarchies
        for entry in (hierarchy.iterdir() if hierarchy.is_dir() else [])
        if entry.is_dir() and pattern.fullmatch(entry.name)
    ]


def _remove_cgroup_tree(top: Path) -> None:
    for _ in range(20):
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                pids = (directory / "cgroup.procs").read_text().split()
                _kill_pids([int(p) for p in pids])
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            _kill_pids([int(p) for p in (top / "cgroup.procs").read_text().split()])
        with contextlib.suppress(OSError):
            top.rmdir()
        if not top.exists():
            return
        time.sleep(0.25)


# --- what a node must undo, kept on disk so a crashed run can be cleaned up later ---------------

NETNS_PATTERN = re.compile(r"infisync-[0-9a-f]{8}")


def _state_dir() -> Path:
    directory = cache_dir() / "nodes"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # records tell root what to kill and delete
    return directory


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): a pid and this name one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class NodeRecord:
    """What a node changed on the machine, written before it changes it."""

    owner_pid: int
    owner_start: str | None
    netns: str  # infisync-<8 hex>; also the name of the node's cgroup root
    workdir: str
    sysctls: dict[str, str]
    absent_paths: list[str]  # HOST_PATHS that did not exist before the node started
    plane_workdir: str = ""  # the control plane's temp directory (a killed run leaves it)

    @property
    def path(self) -> Path:
        return _state_dir() / f"{self.netns}.json"

    def save(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.__dict__, indent=2))
        partial.replace(self.path)  # never a half-written record

    def problems(self) -> list[str]:
        """Why this record must not be acted on (it tells root what to kill and delete)."""
        found = []
        if not NETNS_PATTERN.fullmatch(self.netns):
            found.append(f"netns {self.netns!r}")
        temp = os.path.realpath(tempfile.gettempdir()) + "/"
        for name, prefix in (("workdir", "infisical-node-"), ("plane_workdir", "infisical-cp-")):
            value = getattr(self, name)
            if name == "plane_workdir" and not value:
                continue
            parent, _, leaf = value.rpartition("/")
            if parent + "/" != temp or not leaf.startswith(prefix) or len(leaf) <= len(prefix):
                found.append(f"{name} {value!r}")
        found += [f"path {p!r}" for p in self.absent_paths if p not in HOST_PATHS]
        found += [f"sysctl {n!r}" for n in self.sysctls if n not in KUBELET_SYSCTLS]
        return found

    def owner_alive(self) -> bool:
        return _start_time(self.owner_pid) == self.owner_start is not None


def undo(record: NodeRecord, *, owner_gone: bool = False) -> None:
    """Put the machine back as the record says it was. Idempotent; never raises. The control
    plane's directory goes only when its owner is gone (else the owner stops the plane)."""
    if record.problems():
        return
    workdir = record.workdir
    # Daemons and their shims first (containers are children of shims, killed via cgroups below).
    for _ in range(2):
        _kill_pids(_pids_matching(workdir + "/"))
        time.sleep(0.2)
    # The node's own cgroup root (the kubelet's cgroupRoot): its pods and nothing else.
    for top in _cgroup_dirs(record.netns):
        _remove_cgroup_tree(top)
    _unmount_under(workdir)
    own_netns = Path("/run/netns") / record.netns
    _unmount_under(str(own_netns))
    own_netns.unlink(missing_ok=True)
    for name, value in record.sysctls.items():
        _write_sysctl(name, value)
    for path in record.absent_paths:
        _unmount_under(path)
        target = Path(path)
        if target.is_symlink() or target.is_file():
            target.unlink(missing_ok=True)
        elif target.exists():
            shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    if owner_gone and record.plane_workdir:
        shutil.rmtree(record.plane_workdir, ignore_errors=True)
    record.path.unlink(missing_ok=True)


def _read_record(path: Path) -> NodeRecord | None:
    try:
        return NodeRecord(**json.loads(path.read_text()))
    except (ValueError, OSError, TypeError):
        return None


# A control plane's processes start within seconds of its work directory: one unused and
# unchanged for longer belongs to a run interrupted before its teardown removed it.
STALE_PLANE_SECONDS = 120


def stale_plane_dirs(now: float | None = None) -> list[Path]:
    """Control-plane work directories (`infisical-cp-*`) that no running process names and that
    nothing changed for STALE_PLANE_SECONDS."""
    now = time.time() if now is None else now
    stale = []
    for path in sorted(Path(tempfile.gettempdir()).glob("infisical-cp-*")):
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime >= STALE_PLANE_SECONDS and not _pids_matching(str(path)):
                stale.append(path)
    return stale


def cleanup_stale() -> list[str]:
    """Undo every recorded node whose owner process is gone (a crashed or killed run), and
    remove control-plane directories left by an interrupted run."""
    cleaned: list[str] = []
    for directory in stale_plane_dirs():
        shutil.rmtree(directory, ignore_errors=True)
        cleaned.append(str(directory))
    for path in sorted(_state_dir().glob("*.json")):
        record = _read_record(path)
        if record is None or record.problems() or record.owner_alive():
            continue
        undo(record, owner_gone=True)
        cleaned.append(record.netns)
    return cleaned


@contextlib.contextmanager
def _one_node_per_machine() -> Iterator[None]:
    """Held for a node's lifetime: teardown removes host paths that were absent at its start,
    which is only safe when no other node created them meanwhile."""
    with open(_state_dir() / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeUnavailable("another test node runs on this machine") from None
        yield


# --- the node ---------------------------------------------------------------------------------


@dataclass
class Node:
    """One node attached to a ControlPlane that was created with ``node_ip=NODE_IP``."""

    plane: ControlPlane
    name: str = "node-1"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="infisical-node-")))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    netns: str = field(default_factory=lambda: f"infisync-{uuid.uuid4().hex[:8]}")
    _bridge: NetBridge | None = None
    _record: NodeRecord | None = None
    _lock: contextlib.ExitStack | None = None

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.plane.node_ip != NODE_IP:
            raise ControlPlaneError("the control plane must be created with node_ip=NODE_IP")
        self._lock = contextlib.ExitStack()
        try:
            check_prerequisites()
            self._lock.enter_context(_one_node_per_machine())
            cleanup_stale()
            self._record = NodeRecord(
                owner_pid=os.getpid(),
                owner_start=_start_time(os.getpid()),
                netns=self.netns,
                workdir=str(self.workdir),
                sysctls={n: v for n in KUBELET_SYSCTLS if (v := _read_sysctl(n)) is not None},
                absent_paths=[p for p in HOST_PATHS if not os.path.lexists(p)],
                plane_workdir=str(self.plane.workdir),
            )
            self._record.save()
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        binaries = ensure_kube_binaries(node=True)
        self._make_netns()
        # The API server dials kubelets (node subnet) and, for its pod proxy, pods (pod CIDR).
        self._bridge = NetBridge(self.netns_path, [NODE_SUBNET, POD_CIDR])
        self._bridge.serve_egress(self.plane.egress_socket)
        # The `kubernetes` endpoints point at NODE_IP:<secure port> (the advertise address).
        self._bridge.forward(NODE_IP, self.plane.port, self.plane.port)
        self._start_containerd()
        from infisical_sync.testing.images import ensure_pause_image

        self.load_image(ensure_pause_image(PAUSE_IMAGE))
        pki = self.workdir / "pki"
        pki.mkdir()
        node_url = f"https://{NODE_IP}:{self.plane.port}"
        kubelet_kc = self.plane.kubeconfig_for_user(
            f"system:node:{self.name}", "system:nodes", server=node_url
        )
        proxy_kc = self.plane.kubeconfig_for_user("system:kube-proxy", server=node_url)
        # Their kubeconfigs live in the node's directory: its path in their command lines is how
        # teardown (and a later cleanup of a killed run) finds every process of this node.
        controller_kc = self._own_copy(
            self.plane.kubeconfig_for_user("system:kube-controller-manager", "system:masters")
        )
        scheduler_kc = self._own_copy(self.plane.kubeconfig_for_user("system:kube-scheduler"))
        plane_pki = self.plane.workdir / "pki"
        self._spawn(
            "kube-controller-manager",
            [
                str(binaries["kube-controller-manager"]),
                f"--kubeconfig={controller_kc}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--root-ca-file={self.plane.ca_file}",
                f"--service-account-private-key-file={plane_pki / 'service-account.key'}",
                "--use-service-account-credentials=false",
                "--allocate-node-cidrs=false",
                f"--flex-volume-plugin-dir={self.workdir / 'volume-plugins'}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(binaries["kube-scheduler"]),
                f"--kubeconfig={scheduler_kc}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
        )
        serving_cert, serving_key = self.plane.ca.issue_server([NODE_IP, self.name]).write(
            pki, "kubelet"
        )
        self._make_cgroup_root()
        kubelet_config = self.workdir / "kubelet.yaml"
        kubelet_config.write_text(
            yaml.safe_dump(self._kubelet_config(serving_cert, serving_key), sort_keys=False)
        )
        self._spawn(
            "kubelet",
            [
                str(binaries["kubelet"]),
                f"--config={kubelet_config}",
                f"--kubeconfig={kubelet_kc}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
            in_netns=True,
        )
        proxy_config = self.workdir / "kube-proxy.yaml"
        proxy_config.write_text(yaml.safe_dump(self._proxy_config(proxy_kc), sort_keys=False))
        self._spawn(
            "kube-proxy", [str(binaries["kube-proxy"]), f"--config={proxy_config}"], in_netns=True
        )
        self._start_cluster_dns(node_url)
        self._wait_ready(timeout=120)

    # --- pieces ---------------------------------------------------------------------------------

    def _make_netns(self) -> None:
        _run(["ip", "netns", "add", self.netns])
        ns = ["ip", "-n", self.netns]
        _run([*ns, "link", "set", "lo", "up"])
        # The node's link: a veth pair with both ends inside the namespace (this kernel has no
        # dummy driver), so it has a carrier and nothing behind it: no packet can leave.
        _run([*ns, "link", "add", "node0", "type", "veth", "peer", "name", "node0-end"])
        _run([*ns, "addr", "add", f"{NODE_IP}/24", "dev", "node0"])
        _run([*ns, "link", "set", "node0-end", "up"])
        _run([*ns, "link", "set", "node0", "up"])
        _run([*ns, "route", "add", "default", "dev", "node0"])

    def _start_containerd(self) -> None:
        root = self.workdir / "containerd"
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True)
        (cni_conf / "10-node.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "node",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "cni" / "ipam"),
                            },
                        }
                    ],
                }
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.workdir / "containerd-ttrpc.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: lowering a child's oom_score_adj would fail every sandbox
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{root / "runc"}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"""
        path = self.workdir / "containerd.toml"
        path.write_text(config)
        self._spawn("containerd", ["containerd", f"--config={path}"], in_netns=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive("containerd")
            if self.containerd_socket.exists() and self._ctr(["version"], check=False):
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"containerd not ready:\n{self.log_tail('containerd')}")

    def _own_copy(self, path: Path) -> Path:
        copy = self.workdir / path.name
        shutil.copyfile(path, copy)
        copy.chmod(0o600)
        return copy

    def _make_cgroup_root(self) -> None:
        """The kubelet's cgroupRoot must exist in every hierarchy before it starts."""
        top = Path("/sys/fs/cgroup")
        unified = (top / "cgroup.controllers").exists()  # cgroup v2 only: one hierarchy
        controllers = [top] if unified else [c for c in top.iterdir() if os.path.ismount(c)]
        for controller in controllers:
            root = controller / self.netns
            root.mkdir(exist_ok=True)
            # cgroup v1 cpuset: a new cgroup has no CPUs or memory nodes until given some.
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (root / name).exists() and not (root / name).read_text().strip():
                    (root / name).write_text((controller / name).read_text())

    def _start_cluster_dns(self, node_url: str) -> None:
        """CoreDNS on NODE_IP:53 inside the namespace (the kubelet's clusterDNS): in-cluster
        clients such as kopf resolve `kubernetes.default.svc`. Nothing upstream: names outside
        the cluster do not resolve, as nothing outside the namespace is reachable anyway."""
        user = "system:coredns"
        grant_cluster_role(
            self.plane.kubeconfig,
            user,
            [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces", "endpoints"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        )
        kubeconfig = self.plane.kubeconfig_for_user(user, server=node_url)
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            f""".:53 {{
    errors
    health 127.0.0.1:8091
    ready 127.0.0.1:8181
    cache 5
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""
        )
        self._spawn("coredns", [str(ensure_coredns()), "-conf", str(corefile)], in_netns=True)

    def _ctr(self, args: list[str], *, check: bool = True, timeout: float = 300) -> str:
        return _run(
            ["ctr", "-a", str(self.containerd_socket), "-n", K8S_NAMESPACE, *args],
            check=check,
            timeout=timeout,
        )

    def load_image(self, archive: Path) -> None:
        """Import a docker-archive tarball into the node's containerd (no registry here)."""
        self._ctr(["images", "import", str(archive)])

    def kill_container(self, container_id: str) -> None:
        """SIGKILL a container, as a crash or the OOM killer would (the kubelet restarts it)."""
        self._ctr(["tasks", "kill", "-s", "SIGKILL", container_id])

    def _kubelet_config(self, serving_cert: Path, serving_key: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(serving_cert),
            "tlsPrivateKeyFile": str(serving_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.plane.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            # Pods under a cgroup of this node's own, never a kubelet's `kubepods` at the root:
            # teardown removes this one, and the kubelet only ever reaps what is below it.
            "cgroupRoot": f"/{self.netns}",
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [NODE_IP],
            "podLogsDir": str(self.workdir / "pod-logs"),
            "resolvConf": str(self._resolv_conf()),
            "registerNode": True,
            "serializeImagePulls": False,
            "maxPods": 30,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "protectKernelDefaults": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "localStorageCapacityIsolation": True,
        }

    def _resolv_conf(self) -> Path:
        # Pods with dnsPolicy Default get this; nothing resolves outside the namespace anyway.
        path = self.workdir / "resolv.conf"
        path.write_text(f"nameserver {NODE_IP}\n")
        return path

    def _proxy_config(self, kubeconfig: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": self.name,
            "bindAddress": NODE_IP,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zero: leave the kernel's conntrack settings alone (some are not per namespace).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }

    def _spawn(self, name: str, argv: list[str], *, in_netns: bool = False) -> None:
        if in_netns:
            argv = ["nsenter", f"--net={self.netns_path}", "--", *argv]
        self.processes[name] = spawn_logged(self.workdir, name, argv, cwd=self.workdir)

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise ControlPlaneError(
                f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
            )

    def log_tail(self, name: str, lines: int = 40) -> str:
        return log_tail(self.workdir, name, lines)

    def _wait_ready(self, timeout: float) -> None:
        from kubernetes import client

        core = client.CoreV1Api(api_client(self.plane.kubeconfig))
        deadline = time.monotonic() + timeout
        last = "not registered"
        while time.monotonic() < deadline:
            for name in self.processes:
                self._check_alive(name)
            with contextlib.suppress(Exception):
                node: Any = core.read_node(self.name)
                conditions = {c.type: c for c in node.status.conditions or []}
                ready = conditions.get("Ready")
                if ready is not None and ready.status == "True":
                    return
                last = f"{ready.reason}: {ready.message}" if ready else "no Ready condition"
            time.sleep(0.5)
        raise ControlPlaneError(
            f"node {self.name} not Ready after {timeout:.0f}s ({last}):\n{self.log_tail('kubelet')}"
        )

    def expose(self, host_port: int, node_port: int | None = None) -> str:
        """Make 127.0.0.1:host_port of this machine reachable from pods at NODE_IP:node_port."""
        assert self._bridge is not None
        port = node_port or host_port
        self._bridge.forward(NODE_IP, port, host_port)
        return f"{NODE_IP}:{port}"

    # --- teardown -----------------------------------------------------------------------------

    def stop(self) -> None:
        try:
            # Controllers first: a ReplicaSet must not recreate the pods being drained.
            for name in ("kube-controller-manager", "kube-scheduler"):
                self._stop_process(name)
            self._drain_pods()
            for name in ("coredns", "kube-proxy", "kubelet"):
                self._stop_process(name)
            self._remove_containers()
            self._stop_process("containerd")
        finally:
            # Whatever failed above, the machine is put back.
            if self._bridge is not None:
                with contextlib.suppress(Exception):
                    self._bridge.close()
                self._bridge = None
            if self._record is not None:
                undo(self._record)
                self._record = None
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _drain_pods(self) -> None:
        """Delete every pod so the kubelet stops them and CNI releases their addresses."""
        if "kubelet" not in self.processes or self.processes["kubelet"].poll() is not None:
            return
        with contextlib.suppress(Exception):
            from kubernetes import client

            core = client.CoreV1Api(api_client(self.plane.kubeconfig))
            pods: Any = core.list_pod_for_all_namespaces()
            for pod in pods.items:
                with contextlib.suppress(Exception):
                    core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                    )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if not self._ctr(["tasks", "ls", "-q"], check=False).strip():
                    return
                time.sleep(0.5)

    def _remove_containers(self) -> None:
        if "containerd" not in self.processes or self.processes["containerd"].poll() is not None:
            return
        for task in self._ctr(["tasks", "ls", "-q"], check=False).split():
            self._ctr(["tasks", "kill", "-s", "SIGKILL", task], check=False)
            self._ctr(["tasks", "delete", "--force", task], check=False)
        for container in self._ctr(["containers", "ls", "-q"], check=False).split():
            self._ctr(["containers", "delete", container], check=False)

    def _stop_process(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop_process(process)


@dataclass
class Cluster:
    """A control plane with one node: what the node scenarios run against."""

    plane: ControlPlane
    node: Node

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Start a control plane and one node; stop both (and undo everything) on exit."""
    check_prerequisites()
    with ControlPlane(node_ip=NODE_IP) as plane, Node(plane) as node:
        yield Cluster(plane, node)


def host_snapshot() -> dict[str, Any]:
    """What the networking rule and teardown promise to keep: the machine's own addresses,
    links, routes, firewall rules, the sysctls the kubelet touches, mounts and host paths."""

    def output(*argv: str) -> str:
        if shutil.which(argv[0]) is None:
            return f"({argv[0]} not installed)"
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        return result.stdout + result.stderr

    return {
        "addresses": output("ip", "-o", "addr"),
        "links": output("ip", "-o", "link"),
        "routes": output("ip", "route", "show", "table", "all"),
        "iptables": [
            line for line in output("iptables-save").splitlines() if not line.startswith("#")
        ],
        "nftables": output("nft", "list", "ruleset"),
        "sysctls": {
            name: _read_sysctl(name)
            for name in (*KUBELET_SYSCTLS, "net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding")
        },
        "mounts": sorted(_mountpoints()),
        "host_paths": sorted(p for p in HOST_PATHS if os.path.lexists(p)),
        "cgroups": sorted(str(p) for p in _cgroup_dirs_matching(NETNS_PATTERN)),
        "kubepods": sorted(str(p) for p in _cgroup_dirs("kubepods")),
        "temp_dirs": sorted(
            str(d)
            for pattern in ("infisical-node-*", "infisical-cp-*")
            for d in Path(tempfile.gettempdir()).glob(pattern)
        ),
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
    }


def leftovers() -> list[str]:
    """What a node run could have left behind: named for CI's check after the suite."""
    found = [f"process {pid}" for pid in _pids_matching("/infisical-node-")]
    found += [f"cgroup {path}" for path in _cgroup_dirs_matching(NETNS_PATTERN)]
    found += [
        f"mount {m}" for m in _mountpoints() if "/infisical-node-" in m or "/netns/infisync-" in m
    ]
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [f"netns {e.name}" for e in netns.iterdir() if NETNS_PATTERN.fullmatch(e.name)]
    temp = Path(tempfile.gettempdir())
    found += [f"directory {d}" for d in temp.glob("infisical-node-*")]
    found += [f"directory {d}" for d in temp.glob("infisical-cp-*")]
    found += [f"record {p.name}" for p in _state_dir().glob("*.json")]
    found += [f"path {p}" for p in ("/usr/libexec/kubernetes",) if os.path.lexists(p)]
    return found


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m infisical_sync.testing.node")
    parser.add_argument("action", choices=["check", "cleanup"])
    args = parser.parse_args(argv)
    if args.action == "cleanup":
        for name in cleanup_stale():
            print(f"cleaned up {name}")
    found = leftovers()
    for item in found:
        print(f"left behind: {item}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
