"""`damoc submit`, `damoc status`, `damoc logs`: a selection as a Ray job on a running cluster.

    damoc submit CONFIG --address http://HEAD:8265 [--wait [--follow]] [KEY=VALUE ...]
      -> pre-flight, before anything is sent: the dashboard answers, the auth token (when the
         cluster wants one) is accepted, the config validates, the cluster's alive nodes can hold
         one worker of the config, and a multi-node cluster has storage every node can reach
      -> JobSubmissionClient.submit_job(entrypoint="damoc select CONFIG cluster.address=auto ...",
         runtime_env={working_dir: the project, excludes, pip | image_uri})

Every problem found before submission is a ClusterError (a DamocError: one line, exit code 2), so a
bad address, token, storage path or resource request never leaves a half-started job behind.

Ray token auth (2.60): the dashboard's HTTP middleware wants `Authorization: Bearer <token>` when
the cluster runs with RAY_AUTH_MODE=token, which `ray start --head` turns on by itself whenever a
token exists (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and `ray.init()` turns on
for every new local cluster. `GET /api/authentication_mode` is public and says which mode a
cluster runs. Ray's JobSubmissionClient adds the header itself only when *this* process runs in
token mode (read once, in C++, from RAY_AUTH_MODE); damoc reads the token the same way Ray does
(RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token; none when
RAY_AUTH_MODE=disabled) and always passes it as an explicit header, so submission works whatever
this process's Ray state is.

`LocalCluster` starts real multi-node clusters on one machine (tests, benchmarks): every node is a
`ray start --block` in its own process group with its own temp dir and ports, so that stopping or
killing one ends exactly that node's processes; `ray stop` would end every Ray on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

from damoc.errors import DamocError

log = logging.getLogger("damoc")

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded: virtualenvs, VCS data, run outputs, caches (gitignore syntax, relative to the
# working dir). Ray also honours the working dir's .gitignore files.
DEFAULT_EXCLUDES = [".venv/", "venv/", ".git/", "runs/", "__pycache__/", ".pytest_cache/", ".ruff_cache/",
                    ".mypy_cache/", ".cache/", "*.egg-info/", "build/", "dist/", ".whl/", "*.tmp"]
DASHBOARD_HINT = ("start the head with `ray start --head --dashboard-host 0.0.0.0` (dashboard port 8265), or forward "
                  "it, e.g. `kubectl port-forward svc/<cluster>-head-svc 8265:8265`")
REQUEST_TIMEOUT_S = 10


class ClusterError(DamocError):
    """The cluster cannot take this job: unreachable, wrong token, too small, no shared storage."""


# ------------------------------------------------------------------------------ address and token
def resolve_address(address: Optional[str]) -> str:
    """The dashboard URL: --address, else RAY_ADDRESS (Ray's convention). `host:port` means http."""
    source = "--address"
    if not address:
        address, source = os.environ.get("RAY_ADDRESS", ""), "RAY_ADDRESS"
    address = address.strip().rstrip("/")
    if not address:
        raise ClusterError("no cluster address: pass --address http://HEAD:8265 (the Ray dashboard) or set RAY_ADDRESS")
    if "://" not in address:
        if address == "auto" or not re.fullmatch(r"[\w.\-\[\]:]+:\d+", address):
            raise ClusterError(f"{source} '{address}' is not a dashboard URL: use http://HEAD:8265")
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise ClusterError(f"{source} '{address}' is not a dashboard URL (http:// or https://): damoc submits through "
                           f"the Ray dashboard's job API, e.g. http://HEAD:8265")
    return address


@dataclass
class Token:
    value: str
    source: str          # where it came from, for messages (never the token itself)


def auth_token() -> Optional[Token]:
    """The Ray auth token as Ray itself finds it; None where there is none or RAY_AUTH_MODE=disabled."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    candidates = []
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        candidates.append((Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser(), "RAY_AUTH_TOKEN_PATH"))
    candidates.append((Path.home() / ".ray" / "auth_token", "~/.ray/auth_token"))
    for path, source in candidates:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError:
            if source == "RAY_AUTH_TOKEN_PATH":
                raise ClusterError(f"RAY_AUTH_TOKEN_PATH {path} cannot be read") from None
            continue
        if value:
            return Token(value, f"{source} ({path})")
    return None


# ------------------------------------------------------------------------------ the dashboard
@dataclass
class Node:
    node_id: str
    ip: str
    is_head: bool
    cpus: float
    gpus: float


@dataclass
class ClusterInfo:
    address: str
    auth_mode: str                       # token | disabled | unknown
    nodes: list[Node] = field(default_factory=list)
    headers: dict = field(default_factory=dict)


def connect(address: Optional[str]) -> ClusterInfo:
    """Check that the dashboard at `address` answers and accepts our token; list the alive nodes.
    Raises ClusterError with one line saying what to do otherwise."""
    import requests

    url = resolve_address(address)
    try:
        r = requests.get(f"{url}/api/authentication_mode", timeout=REQUEST_TIMEOUT_S)
    except requests.Timeout:
        raise ClusterError(f"cannot reach the Ray dashboard at {url} (no answer in {REQUEST_TIMEOUT_S} s): "
                           f"{DASHBOARD_HINT}") from None
    except requests.RequestException:
        raise ClusterError(f"cannot reach the Ray dashboard at {url} (connection refused or host unknown): "
                           f"{DASHBOARD_HINT}") from None
    mode = "unknown"
    if r.status_code == 200:
        with contextlib.suppress(ValueError):
            mode = r.json().get("authentication_mode", "unknown")
    try:
        token = auth_token()
    except ClusterError:
        if mode == "token":
            raise
        token = None  # a broken token path does not matter to a cluster without token auth
    if mode == "token" and token is None:
        raise ClusterError(f"the cluster at {url} requires a Ray auth token and none was found: set RAY_AUTH_TOKEN "
                           f"(or RAY_AUTH_TOKEN_PATH, or write ~/.ray/auth_token); `ray get-auth-token` on the head "
                           f"prints it")
    headers = {"Authorization": f"Bearer {token.value}"} if token else {}
    try:
        r = requests.get(f"{url}/api/v0/nodes", params={"limit": 10000, "detail": "true"}, headers=headers,
                         timeout=REQUEST_TIMEOUT_S)
    except requests.RequestException as e:
        raise ClusterError(f"the Ray dashboard at {url} stopped answering ({type(e).__name__}): {DASHBOARD_HINT}") from None
    if r.status_code in (401, 403):
        got = f"the token from {token.source}" if token else "no token"
        raise ClusterError(f"the cluster at {url} rejected {got} (HTTP {r.status_code}): use the head's token "
                           f"(`ray get-auth-token` on the head) in RAY_AUTH_TOKEN")
    if r.status_code != 200:
        raise ClusterError(f"{url} does not look like a Ray >= 2.9 dashboard (GET /api/v0/nodes: HTTP {r.status_code})")
    try:
        rows = r.json()["data"]["result"]["result"]
    except (ValueError, KeyError, TypeError):
        raise ClusterError(f"{url} answered GET /api/v0/nodes with something that is not Ray's node list") from None
    nodes = [Node(row["node_id"], row.get("node_ip", "?"), bool(row.get("is_head_node")),
                  float((row.get("resources_total") or {}).get("CPU", 0)),
                  float((row.get("resources_total") or {}).get("GPU", 0)))
             for row in rows if row.get("state") == "ALIVE"]
    return ClusterInfo(url, mode, nodes, headers)


@contextlib.contextmanager
def _only_this_address(url: str) -> Iterator[None]:
    """JobSubmissionClient lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its `address`
    argument; damoc's --address must win, so both are pinned to it while the client is made."""
    saved = {k: os.environ.get(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")}
    os.environ["RAY_API_SERVER_ADDRESS"] = url
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray logs every file it skips while packaging the working dir and warns about the
    directories it leaves out by default; that shows with -v only."""
    import ray.job_submission  # noqa: F401 - importing ray sets its loggers' levels: do it first

    ray_log = logging.getLogger("ray")
    level = ray_log.level
    if not log.isEnabledFor(logging.DEBUG):
        ray_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray_log.setLevel(level)


def job_client(info: ClusterInfo):
    from ray.job_submission import JobSubmissionClient

    with _only_this_address(info.address):
        try:
            return JobSubmissionClient(info.address, headers=dict(info.headers))
        except (ConnectionError, RuntimeError) as e:
            raise ClusterError(f"the job API at {info.address} refused the connection: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ------------------------------------------------------------------------------ pre-flight
def check_fits(config, info: ClusterInfo, *, autoscaling: bool = False) -> None:
    """Refuse a config the cluster's alive nodes cannot run: a worker (or in-process trial) bigger
    than any node, or trial storage other nodes cannot reach.

    `autoscaling`: the cluster adds nodes while work waits (Ray autoscaler, KubeRay with
    minReplicas 0), so the nodes alive now say nothing about the nodes the trials will get: the
    node-size checks are skipped, and storage is checked as for a multi-node cluster."""
    cluster = config.cluster
    nodes = info.nodes
    if not nodes:
        raise ClusterError(f"the cluster at {info.address} has no alive node")
    if autoscaling:
        _check_storage(config, info, nodes="nodes added by its autoscaler")
        return
    max_gpus = max(n.gpus for n in nodes)
    max_cpus = max(n.cpus for n in nodes)
    what = "worker" if cluster.workers_per_candidate else "trial (workers_per_candidate=0: one in-process trial)"
    if cluster.gpus_per_worker > max_gpus:
        has = f"the largest node has {max_gpus:g}" if max_gpus else "no node has a GPU"
        raise ClusterError(f"cluster.gpus_per_worker={cluster.gpus_per_worker:g} GPUs per {what}, but {has} on the "
                           f"cluster at {info.address} ({len(nodes)} node(s))")
    if cluster.cpus_per_worker > max_cpus:
        raise ClusterError(f"cluster.cpus_per_worker={cluster.cpus_per_worker:g} CPUs per {what}, but the largest "
                           f"node of the cluster at {info.address} has {max_cpus:g}")
    if not any(n.cpus >= cluster.cpus_per_worker and n.gpus >= cluster.gpus_per_worker for n in nodes):
        raise ClusterError(f"no node of the cluster at {info.address} has both {cluster.cpus_per_worker:g} CPUs and "
                           f"{cluster.gpus_per_worker:g} GPUs for one {what}")
    if cluster.placement_strategy == "STRICT_SPREAD" and cluster.workers_per_candidate > len(nodes):
        raise ClusterError(f"cluster.placement_strategy STRICT_SPREAD puts each of the {cluster.workers_per_candidate} "
                           f"workers on its own node, but the cluster at {info.address} has {len(nodes)}")
    if cluster.placement_strategy == "STRICT_PACK" and cluster.workers_per_candidate > 1:
        cpus, gpus = (cluster.workers_per_candidate * x for x in (cluster.cpus_per_worker, cluster.gpus_per_worker))
        if not any(n.cpus >= cpus and n.gpus >= gpus for n in nodes):
            raise ClusterError(f"cluster.placement_strategy STRICT_PACK puts all {cluster.workers_per_candidate} workers "
                               f"of a trial on one node ({cpus:g} CPUs, {gpus:g} GPUs), but no node of the cluster at "
                               f"{info.address} has that much")
    if len(nodes) > 1:
        _check_storage(config, info, nodes=f"{len(nodes)} nodes")


def _check_storage(config, info: ClusterInfo, *, nodes: str) -> None:
    """Storage for a cluster of more than one node (`nodes` says how many, for the message)."""
    cluster = config.cluster
    if not cluster.shared_storage:
        storage = cluster.storage_path
        if storage is None or "://" not in storage or storage.startswith("file://"):
            where = f"'{storage}' is a local path" if storage else f"is not set (default: {config.output.dir}/ray_results, local)"
            raise ClusterError(f"cluster.storage_path {where} and the cluster at {info.address} has {nodes}: "
                               f"trials on other nodes cannot reach it; use s3:// or gs:// storage, or a path every node "
                               f"mounts (NFS, a shared volume) with cluster.shared_storage=true")
        raise ClusterError(f"the cluster at {info.address} has {nodes} and trials read the compressed data "
                           f"and candidate checkpoints from the stage cache (output.cache_dir): put it on a filesystem "
                           f"every node mounts and set cluster.shared_storage=true")


# ------------------------------------------------------------------------------ submit
def project_dir(config_path: Path) -> Path:
    """The project a config belongs to: the nearest parent with pyproject.toml or .git, else the
    config's own directory."""
    for parent in config_path.resolve().parents:
        if (parent / "pyproject.toml").is_file() or (parent / ".git").exists():
            return parent
    return config_path.resolve().parent


def read_pip(specs: Sequence[str]) -> list[str]:
    """--pip values: requirement strings, or requirements files (read line by line)."""
    out: list[str] = []
    for spec in specs:
        path = Path(spec)
        if spec.endswith(".txt") and path.is_file():
            out += [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
                    if line.split("#")[0].strip()]
        elif spec.endswith(".txt"):
            raise ClusterError(f"--pip {spec}: requirements file not found")
        else:
            out.append(spec)
    return out


@dataclass
class Submission:
    submission_id: str
    entrypoint: str
    runtime_env: dict
    output_dir: str
    info: ClusterInfo
    client: object = field(repr=False)


def submit(config_path: str, overrides: Sequence[str], *, address: Optional[str], working_dir: Optional[str] = None,
           pip: Sequence[str] = (), image: Optional[str] = None, submission_id: Optional[str] = None,
           check_resources: bool = True, autoscaling: bool = False) -> Submission:
    """Validate everything locally and against the cluster, then submit. The returned submission
    carries the JobSubmissionClient, for waiting on the job."""
    from damoc.config import load_config
    from damoc.orchestrate import run_name
    from damoc.report.storage import report_uri

    path = Path(config_path)
    # The config (and the overrides) must validate here, as the cluster will load them.
    config = load_config(path, [*overrides, "cluster.address=auto"])
    root = Path(working_dir).expanduser().resolve() if working_dir else project_dir(path)
    if not root.is_dir():
        raise ClusterError(f"--working-dir {root} is not a directory")
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        raise ClusterError(f"config {path} is outside the working directory {root} that is uploaded: pass "
                           f"--working-dir with a directory that contains it") from None
    pip_list = read_pip(pip)
    info = connect(address)
    if check_resources:
        check_fits(config, info, autoscaling=autoscaling)
    if not Path(config.output.dir).is_absolute():
        log.warning("output.dir '%s' is relative: on the cluster it lands inside the job's unpacked working "
                    "directory on the driver node; give an absolute path on storage you can read", config.output.dir)

    runtime_env: dict = {"working_dir": str(root), "excludes": list(DEFAULT_EXCLUDES)}
    if pip_list:
        runtime_env["pip"] = pip_list
    if image:
        runtime_env["image_uri"] = image
    entrypoint = shlex.join(["damoc", "select", relative.as_posix(), *overrides, "cluster.address=auto"])
    name = run_name(config)[:40]
    submission_id = submission_id or f"damoc-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    log.info("uploading %s (without %s) to %s", root, ", ".join(e.rstrip("/") for e in DEFAULT_EXCLUDES[:4]),
             info.address)
    client = job_client(info)
    try:
        with _quiet_ray():
            metadata = {"damoc_config": relative.as_posix(), "damoc_output_dir": config.output.dir}
            if config.cluster.storage_path:
                metadata["damoc_stored_report"] = report_uri(config.cluster.storage_path, run_name(config)) + "/report.json"
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       submission_id=submission_id, metadata=metadata)
    except (RuntimeError, ConnectionError, ValueError) as e:
        raise ClusterError(f"the cluster at {info.address} did not accept the job: {_first_line(e)}") from None
    return Submission(job_id, entrypoint, runtime_env, config.output.dir, info, client)


# ------------------------------------------------------------------------------ status and logs
def _job_call(info: ClusterInfo, job_id: str, fn):
    try:
        return fn()
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise ClusterError(f"no job '{job_id}' on the cluster at {info.address}") from None
        raise ClusterError(f"the job API at {info.address} failed for job '{job_id}': {_first_line(e)}") from None
    except ConnectionError as e:
        raise ClusterError(f"lost the Ray dashboard at {info.address}: {_first_line(e)}") from None


def job_info(client, info: ClusterInfo, job_id: str):
    return _job_call(info, job_id, lambda: client.get_job_info(job_id))


def job_logs(client, info: ClusterInfo, job_id: str) -> str:
    return _job_call(info, job_id, lambda: client.get_job_logs(job_id))


def follow_logs(client, info: ClusterInfo, job_id: str, out=None) -> None:
    """Stream the job's logs until it ends (Ray closes the websocket at a terminal status)."""
    out = out or sys.stdout

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    job_info(client, info, job_id)  # an unknown id fails as a one-liner, not inside the websocket
    with contextlib.suppress(RuntimeError):  # the socket closing at the end is not an error
        asyncio.run(tail())


def wait(client, info: ClusterInfo, job_id: str, *, timeout: Optional[float] = None, poll_s: float = 2.0):
    """Poll until the job reaches a terminal status (or `timeout` seconds pass). Returns its JobInfo."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = job_info(client, info, job_id)
        if str(job.status) in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return job
        time.sleep(poll_s)


def report_location(job) -> Optional[str]:
    out = (job.metadata or {}).get("damoc_output_dir")
    if not out:
        return None
    where = "" if Path(out).is_absolute() else " (relative to the job's working directory on the driver node)"
    return f"{out}/report.json{where}"


def describe(job, job_id: str) -> list[str]:
    lines = [f"job: {job_id}", f"status: {job.status}"]
    if job.message:
        # A failed job's message is Ray's summary line plus the tail of its logs: keep the summary
        # and the last log line (damoc's own one-line error, or the exception).
        text = [line.strip() for line in str(job.message).splitlines() if line.strip()]
        lines.append(f"message: {text[0][:300]}" + (f" ... {text[-1][:300]}" if len(text) > 1 else ""))
    lines.append(f"entrypoint: {job.entrypoint}")
    if job.start_time:
        lines.append(f"started: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.start_time / 1000))}")
    if job.end_time:
        lines.append(f"ended: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.end_time / 1000))}"
                     f" ({(job.end_time - job.start_time) / 1000:.0f} s)")
    where = report_location(job)
    stored = (job.metadata or {}).get("damoc_stored_report")
    if where and str(job.status) == "SUCCEEDED":
        lines.append(f"report: {where}")
        if stored:
            lines.append(f"stored: {stored}")
    elif where and str(job.status) not in TERMINAL:
        lines.append(f"report (when it succeeds): {where}" + (f" and {stored}" if stored else ""))
    return lines


# ------------------------------------------------------------------------------ local clusters
def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all held open while picking, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _port_range(width: int = 100) -> tuple[int, int]:
    """A block of `width` free ports for one node's workers, between Ray's default worker ports
    (10002-19999, other Ray instances) and the kernel's ephemeral range (where free_port's picks
    for the node's other components come from; Ray refuses overlaps)."""
    top = 32768
    with contextlib.suppress(OSError, ValueError):
        top = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        low = random.randrange(20000, max(20000 + width, top - width), width)
        if all(_is_free(p) for p in (low, low + width // 2, low + width - 1)):
            return low, low + width - 1
    raise RuntimeError("no free block of worker ports")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class NodeExited(RuntimeError):
    def __init__(self, node: "LocalNode", message: str):
        super().__init__(message)
        self.node = node


@dataclass
class LocalNode:
    index: int
    temp_dir: Path
    process: subprocess.Popen
    log_path: Path
    head: bool
    # Ray's id for this node, recorded when it registers (add_node with wait). A killed node stays
    # ALIVE in the GCS until its health checks time out, so the live nodes are told apart by id,
    # never by listing what the GCS calls alive.
    node_id: Optional[str] = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    """A Ray cluster of `ray start` nodes on this machine, for tests and benchmarks.

    Each node runs `ray start --block` as the leader of a new process group, with its own
    --temp-dir and its own ports (GCS, dashboard, node and object manager, agents, and a worker
    port block outside both Ray's default range and the ephemeral range), so several nodes and
    other users' Ray instances coexist. `kill_node` / `stop` collect the node's processes (its
    process group, anything naming its temp dir, and all their descendants: Ray's workers call
    setsid and rename themselves `ray::...`, so only the process tree finds them) and signal
    exactly those; `ray stop` is never used, as it ends every Ray process on the machine. Token
    auth is on with a fresh random token (given to the nodes as RAY_AUTH_TOKEN, which Ray prefers
    to any token file), so the cluster never depends on ~/.ray/auth_token.
    """

    def __init__(self, root: str | os.PathLike, *, cpus_per_node: float = 1, object_store_mb: int = 128,
                 env: Optional[dict] = None, token: Optional[str] = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cpus_per_node = cpus_per_node
        self.object_store_mb = object_store_mb
        self.token = token or secrets.token_hex(16)
        self.gcs_port, self.dashboard_port = free_ports(2)
        self.nodes: list[LocalNode] = []
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(key, None)

    @property
    def address(self) -> str:
        """The dashboard URL (what `damoc submit --address` takes)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self, nodes: int = 2, timeout: float = 120) -> "LocalCluster":
        """Start the head and `nodes - 1` more nodes, one after the other, each until it is alive."""
        try:
            for _ in range(nodes):
                self.add_node(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self, timeout: float = 120, attempts: int = 3) -> LocalNode:
        """Start one more node (the head first) and wait until it has registered, with its Ray
        node id set. A node that exits while starting (a port taken by someone else between
        picking and binding) is retried on fresh ports."""
        for attempt in range(attempts):
            known = {n.node_id for n in self.nodes if n.node_id}
            node = self._launch()
            try:
                node.node_id = self._wait_for_new_node(known, timeout)
                return node
            except NodeExited as e:
                if e.node is not node or attempt == attempts - 1:
                    raise
                self.kill_node(node)
                self.nodes.remove(node)
                if node.head:
                    self.gcs_port, self.dashboard_port = free_ports(2)
        raise AssertionError("unreachable")

    def _launch(self) -> LocalNode:
        ray = str(Path(sys.executable).parent / "ray")
        index = len(self.nodes)
        temp_dir = self.root / f"n{index}"
        temp_dir.mkdir(parents=True, exist_ok=True)
        low, high = _port_range()
        taken = {self.gcs_port, self.dashboard_port}
        ports = iter([p for p in free_ports(9) if p not in taken])
        args = [ray, "start", "--block", "--temp-dir", str(temp_dir), "--num-cpus", f"{self.cpus_per_node:g}",
                "--num-gpus", "0", "--object-store-memory", str(self.object_store_mb * 2**20),
                "--node-ip-address", "127.0.0.1", "--node-manager-port", str(next(ports)),
                "--object-manager-port", str(next(ports)), "--min-worker-port", str(low), "--max-worker-port", str(high),
                "--dashboard-agent-listen-port", str(next(ports)), "--dashboard-agent-grpc-port", str(next(ports)),
                "--runtime-env-agent-port", str(next(ports)), "--metrics-export-port", str(next(ports)),
                "--disable-usage-stats", "--log-style", "record"]
        if index == 0:
            args += ["--head", "--port", str(self.gcs_port), "--dashboard-port", str(self.dashboard_port),
                     "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                     "--ray-client-server-port", str(next(ports))]
        else:
            args += ["--address", self.gcs_address]
        log_path = self.root / f"n{index}.log"
        with open(log_path, "ab") as logf:
            process = subprocess.Popen(args, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(self.root))
        node = LocalNode(index, temp_dir, process, log_path, head=index == 0)
        self.nodes.append(node)
        return node

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def alive_nodes(self) -> list[dict]:
        """The ALIVE nodes as the state API lists them ([] while the dashboard is not up)."""
        import requests

        try:
            r = requests.get(f"{self.address}/api/v0/nodes", params={"limit": 1000, "detail": "true"},
                             headers=self.headers(), timeout=5)
            rows = r.json()["data"]["result"]["result"] if r.status_code == 200 else []
        except (requests.RequestException, ValueError, KeyError, TypeError):
            rows = []
        return [row for row in rows if row.get("state") == "ALIVE"]

    def live_node_ids(self) -> list[str]:
        """Ray's ids of the nodes whose processes run (see LocalNode.node_id)."""
        return [n.node_id for n in self.nodes if n.alive and n.node_id]

    def _wait_for_new_node(self, known: set[str], timeout: float = 120) -> str:
        """The id of the node that registers with an id not in `known` (the nodes started before
        it, dead ones included: the GCS lists a killed node as ALIVE for a while, so counting
        ALIVE nodes could be satisfied by the dead one before the new one has joined)."""
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.process.poll() is not None and node.process.returncode not in (None, 0, -9, -15):
                    lines = node.log_path.read_text(errors="replace").strip().splitlines()
                    raise NodeExited(node, f"ray node {node.index} exited ({node.process.returncode}): "
                                           f"{lines[-1] if lines else ''} (log: {node.log_path})")
            new = [row["node_id"] for row in self.alive_nodes() if row["node_id"] not in known]
            if new:
                return new[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new Ray node registered after {timeout:.0f} s (logs: {self.root})")
            time.sleep(1)

    def node_processes(self, node: LocalNode) -> list:
        """Every live process of `node` (psutil.Process objects): its process group, any process
        naming its temp dir, and all their descendants. Ray's workers start their own sessions
        (setsid) and rename themselves (`ray::IDLE`), so they are found as the raylet's children."""
        import psutil

        node.process.poll()  # reap `ray start` itself once it has exited
        marker = re.compile(re.escape(str(node.temp_dir)) + r"(?=[/\s'\"]|$)")
        roots = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if os.getpgid(proc.pid) == node.process.pid or marker.search(" ".join(proc.info["cmdline"] or [])):
                    roots.append(proc)
            except (psutil.Error, OSError):
                continue
        found = {p.pid: p for p in roots}
        for proc in roots:
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in proc.children(recursive=True)})
        return [p for p in found.values() if _running(p)]

    def kill_node(self, node: LocalNode, sig: int = signal.SIGKILL, grace: float = 10) -> None:
        """End one node's processes: SIGKILL (a crash), or SIGTERM (a shutdown) and SIGKILL for what
        is left after `grace` seconds. Only this node's processes are touched."""
        import psutil

        procs = self.node_processes(node)  # all of them before any dies: orphans leave the tree
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, alive = psutil.wait_procs(procs, timeout=grace)
        alive += [p for p in self.node_processes(node) if p not in alive]
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=5)

    def stop(self) -> None:
        """Stop the worker nodes, then the head (a graceful SIGTERM first)."""
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                self.kill_node(node, signal.SIGTERM, grace=5)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
