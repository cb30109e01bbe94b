"""The Ray backend of trace-many: one actor per model copy, loaded once; the driver writes every result.

Each actor is a `Tracer` reserving `threads` CPUs, so Ray places as many copies on a node as its CPUs allow.
Results (the graph JSON text, ~0.1–5 MB) travel back through Ray's object store and the driver writes them
into the store, so workers need no shared file system. `--ray` alone starts a private cluster on 127.0.0.1;
`--ray ADDRESS` joins one, after checking it answers (an unreachable address is one line, nothing started).
Workers of a remote cluster need mechscope and the model's files installed (see docs/many.md).

>>> b = RayBackend(WorkerSpec(model="gemma3-270m", threads=2), workers=4, address="local")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

from mechscope.errors import MechscopeError
from mechscope.many.inputs import PromptItem
from mechscope.many.store import Result
from mechscope.many.worker import Tracer, WorkerSpec

log = logging.getLogger(__name__)
CLIENT_PORT = 10001  # ray:// (Ray Client) default
GCS_PORT = 6379  # host without a port: the head node's default
MAX_RESTARTS = 3
LOOPBACK = "127.0.0.1"


def import_ray():
    try:
        import ray
    except ImportError:
        raise MechscopeError("--ray needs Ray: pip install 'mechscope[many]' (or: pip install 'ray>=2.9')") from None
    return ray


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Refuse an address nothing answers on, before Ray starts anything (Ray itself retries for a minute).

    >>> check_reachable("127.0.0.1:1")
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: cannot reach a Ray cluster at 127.0.0.1:1 (Connection refused)
    """
    if address in ("local", "auto"):
        return
    u = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = u.hostname, u.port or (CLIENT_PORT if u.scheme == "ray" else GCS_PORT)
    except ValueError as e:
        raise MechscopeError(f"bad Ray address {address!r}: {e}") from None
    if not host:
        raise MechscopeError(f"bad Ray address {address!r}: expected host:port or ray://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            grpc = _speaks_grpc(sock)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise MechscopeError(f"cannot reach a Ray cluster at {address} ({why})") from None
    if not grpc:  # Ray would retry a non-Ray service for minutes before giving up
        raise MechscopeError(f"{address} answers, but not as a Ray cluster (no gRPC there); check the address and port")


def _speaks_grpc(sock: socket.socket) -> bool:
    """Whether the server answers an HTTP/2 client preface with a SETTINGS frame, as Ray's gRPC servers (the head
    node's GCS, Ray Client) do; a web server, ssh or anything else does not."""
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # preface + empty SETTINGS
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))
        if not chunk:
            return False
        head += chunk
    return head[3] == 4  # frame type 4: SETTINGS


def start_ray(address: str, num_cpus: int, quiet: bool) -> bool:
    """Connect to (or start) the cluster; True when this call started Ray in this process (so it shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():  # a notebook or a test already joined a cluster: use it as it is
        return False
    check_reachable(address)
    kw = dict(include_dashboard=False, log_to_driver=not quiet, configure_logging=False)
    try:
        if address == "local":
            _loopback_only(ray)
            # a private cluster sized to the threads asked for (each actor reserves its threads)
            ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, **kw)
            bound = {n.get("NodeManagerAddress") for n in ray.nodes()}
            if bound != {LOOPBACK}:  # never serve a private cluster on the network
                ray.shutdown()
                raise MechscopeError(f"the local Ray cluster did not bind to {LOOPBACK} only ({sorted(bound)})")
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MechscopeError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    return True


def _loopback_only(ray) -> None:
    """Make a new local cluster listen on 127.0.0.1 only. Ray replaces a loopback node address by the machine's
    network address (and its servers then listen on every interface) unless "clusters" are off, as on macOS;
    the variable reaches Ray's own processes, the module flag this process (read at call time)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


class RayBackend:
    """`workers` Ray actors, each a Tracer holding one model copy; one prompt in flight per actor."""

    name = "ray"

    def __init__(self, spec: WorkerSpec, workers: int, address: str = "local", quiet: bool = False) -> None:
        self.spec, self.slots, self.address, self.quiet = spec, workers, address, quiet
        self._owns_ray = False
        self._actors: list = []
        self._idle: list = []
        self._running: dict = {}  # ObjectRef -> (actor, item)
        self._restarts = 0

    def start(self) -> None:
        ray = import_ray()
        self._owns_ray = start_ray(self.address, self.slots * max(1, self.spec.threads), self.quiet)
        cpus = ray.cluster_resources().get("CPU", 0)
        need = self.slots * max(1, self.spec.threads)
        if cpus < need:
            self.close()
            raise MechscopeError(
                f"the Ray cluster has {cpus:g} CPUs; {self.slots} workers × {max(1, self.spec.threads)} threads "
                f"need {need} (lower --workers or --threads)"
            )
        self._actor_cls = ray.remote(num_cpus=max(1, self.spec.threads), max_restarts=0)(_RayTracer)
        self._actors = [self._actor_cls.remote(self.spec) for _ in range(self.slots)]
        # every copy loads before the first prompt: a load failure is one error, not one per prompt
        try:
            ray.get([a.ready.remote() for a in self._actors])
        except Exception as e:  # noqa: BLE001 - Ray wraps the worker's exception in its own types
            self.close()
            raise MechscopeError(f"a Ray worker could not load the model: {_cause(e)}") from None
        self._idle = list(self._actors)

    def submit(self, item: PromptItem) -> None:
        actor = self._idle.pop()
        self._running[actor.trace.remote(item)] = (actor, item)

    def next_result(self) -> Result:
        ray = import_ray()
        (ref,), _ = ray.wait(list(self._running), num_returns=1)
        actor, item = self._running.pop(ref)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayActorError:
            # the actor's process died (killed, out of memory): this prompt failed, a fresh copy takes its slot
            self._replace(actor)
            return Result(item.id, error="the Ray worker died while tracing this prompt (out of memory? killed?)")
        self._idle.append(actor)
        return res

    def _replace(self, dead) -> None:
        ray = import_ray()
        self._restarts += 1
        if self._restarts > MAX_RESTARTS:
            raise MechscopeError(f"Ray workers died {self._restarts} times; stopping (pending prompts stay pending)")
        fresh = self._actor_cls.remote(self.spec)
        ray.get(fresh.ready.remote())
        self._actors = [fresh if a is dead else a for a in self._actors]
        self._idle.append(fresh)

    def close(self) -> None:
        ray = import_ray()
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors, self._idle, self._running = [], [], {}
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


class _RayTracer:
    """The actor: a Tracer loaded once per process (Ray calls its methods one at a time)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.tracer = Tracer(spec).load()

    def ready(self) -> str:
        return self.tracer.name

    def trace(self, item: PromptItem) -> Result:
        return self.tracer.trace(item)


def _cause(e: Exception) -> str:
    c = getattr(e, "cause", None) or e
    return str(c).strip().splitlines()[-1] if str(c).strip() else type(c).__name__
