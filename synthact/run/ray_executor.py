"""Ray executor: the same sweep as `run_local`, its shards served by worker actors on a Ray cluster.

Each actor holds one (model, SAE family) group in memory (a `synthact.worker.Worker`) and serves
many shards. The driver keeps at most `ray.max_in_flight` shards queued per actor, so its memory
does not grow with the sweep; every finished table comes back to the driver, which writes it
through `Store.write_shard` (atomic, then the manifest). A group's first actor computes and
stores its reference statistics before any other actor of that group loads, so they are
computed once and only read by the rest. A shard whose actor dies (node removed, process
killed) or whose run raises is retried on any actor of its group, at most `ray.max_retries`
times, then reported as failed; the rest of the sweep goes on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from synthact.errors import SynthactError, first_line, last_line
from synthact.run.local_executor import load_worker
from synthact.run.plan import CellListener, Plan, Progress, RunSummary, progress_of
from synthact.run.store import Store
from synthact.spec import Job, ModelSpec, SAESpec, Shard, digest

log = logging.getLogger(__name__)

# How long the driver waits for any result before it logs that it is still waiting
# (e.g. for an autoscaler to add GPU nodes).
WAIT_NOTICE_S = 60.0


def run_ray(
    job: Job, store: Store, address: str, progress: bool | Progress = True, listeners: list[CellListener] | None = None
) -> RunSummary:
    """Run every pending shard on Ray worker actors; same contract as `synthact.execute.run_local`.

    `address`: 'auto' (the cluster this process runs in), 'local' (start a Ray instance on
    this machine) or a cluster address such as 'ray://head:10001' or '10.0.0.1:6379'. An
    existing `ray.init` connection in this process is used as it is.
    """
    listeners = listeners or []
    check_address(address)
    start = time.perf_counter()
    bar = progress_of(progress)
    bar.phase(f"checking the finished shards of {store.uri}")
    store.discard_damaged_stats()
    plan = Plan(job, store)
    if plan.complete_at_start and listeners:
        bar.phase(f"W&B: logging the {len(plan.complete_at_start)} cells finished before")
    plan.announce_complete_cells(listeners)
    bar.start(plan)
    bar.phase(f"connecting to Ray ({address})")
    started_here = connect(address, dashboard=job.ray.dashboard)
    try:
        gpus = actor_gpus(job, address == "local")
        Dispatcher(job, plan, store.stats_root, bar, listeners, gpus).run()
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
        plan.summary.wall_s = time.perf_counter() - start
    return plan.summary


def connect(address: str, dashboard: bool = True) -> bool:
    """Connect this process to Ray; True when this call did (so the caller disconnects).

    `dashboard`: whether an instance started here ('local') runs Ray's dashboard; its address is printed."""
    if ray.is_initialized():
        return False
    kwargs = {"log_to_driver": False, "configure_logging": False}
    check_address(address)
    try:
        if address == "local":  # always a new instance here, whatever RAY_ADDRESS says
            saved = os.environ.pop("RAY_ADDRESS", None)
            try:
                context = ray.init(address="local", include_dashboard=dashboard, **kwargs)
            finally:
                if saved is not None:
                    os.environ["RAY_ADDRESS"] = saved
            if context.dashboard_url:  # Ray's own line is silenced with its logging
                print(f"synthact: Ray dashboard at http://{context.dashboard_url}", file=sys.stderr)
        else:
            ray.init(address=address, **kwargs)
    except RayError as e:  # AuthenticationError, e.g. a ray:// address whose cluster wants a token
        raise SynthactError(token_problem(address) if "auth" in type(e).__name__.lower() else
                            f"could not connect to a Ray cluster at '{address}' ({first_line(str(e))})") from None
    except (ConnectionError, ValueError) as e:
        raise SynthactError(
            f"could not connect to a Ray cluster at '{address}' ({e}). Start one (`ray start --head` on this "
            "machine, or `ray up cluster.yaml`), pass its address (e.g. 10.0.0.1:6379), or use --ray local "
            "to start Ray on this machine"
        ) from None
    return True


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse what is not an address; fail in seconds, not minutes of ray.init retries, when host:port does not answer."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdecimal():
        raise SynthactError(
            f"--ray '{address}' is not a Ray address; use 'local' (start Ray here), 'auto' (the cluster this "
            "machine belongs to), host:port (e.g. 10.0.0.1:6379) or ray://host:10001"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise SynthactError(
            f"no Ray cluster answers at '{address}' ({e}). Check the head node's address and port (6379 by "
            "default), or use --ray local to start Ray on this machine"
        ) from None
    check_token(address)


def check_token(address: str) -> None:
    """Fail in a second, naming the cause, when the cluster uses token authentication and this driver has no
    (or another) token; ray.init would retry for 20 s and then only say that it could not connect."""
    from ray.exceptions import AuthenticationError

    try:
        from ray._raylet import GcsClient  # private: where it is missing, ray.init's own error stands

        GcsClient(address=address)
    except AuthenticationError:
        raise SynthactError(token_problem(address)) from None
    except Exception:  # not an authentication problem: ray.init reports it
        pass


def token_problem(address: str) -> str:
    mode = os.environ.get("RAY_AUTH_MODE", "")
    why = (f"RAY_AUTH_MODE is '{mode or 'unset'}' here, so this driver sends no token" if mode.lower() != "token"
           else "the token found here is not the cluster's")
    return (
        f"the Ray cluster at '{address}' uses token authentication and refused this driver: {why}. Ray "
        f"{ray.__version__} turns "
        "token authentication on for `ray start --head` when RAY_AUTH_MODE=token or a token file exists, and for "
        "every instance ray.init starts. Set RAY_AUTH_MODE=token here and give the cluster's token (`ray "
        "get-auth-token` on the head prints it) in RAY_AUTH_TOKEN, or in a file named by RAY_AUTH_TOKEN_PATH, or in "
        "~/.ray/auth_token (where Ray looks, in that order); see docs/ray.md, 'Token authentication'"
    )


def actor_gpus(job: Job, started_here: bool) -> float:
    """GPUs per worker actor: none for a CPU job; on a Ray instance started here, only GPUs it has.

    There a `device: auto` job without GPUs runs on CPU actors, and a request no node can meet
    (a CUDA job without GPUs, more CPUs than the machine has) fails fast, since no autoscaler
    can add one; on a cluster, actors may wait for an autoscaler to add nodes.
    """
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if started_here and job.ray.num_cpus > cpus:
        raise SynthactError(
            f"the job asks for {job.ray.num_cpus} CPUs per worker (ray.num_cpus) but the Ray instance started on "
            f"this machine has {cpus}; lower ray.num_cpus"
        )
    if job.ray.num_gpus == 0 or job.device == "cpu":
        return 0.0
    if not started_here:
        return job.ray.num_gpus
    largest = max((n.get("GPU", 0) for n in nodes), default=0)
    if largest >= job.ray.num_gpus:
        return job.ray.num_gpus
    if job.device == "auto" and largest == 0:
        return 0.0
    raise SynthactError(
        f"the job asks for {job.ray.num_gpus} GPU(s) per worker (ray.num_gpus, device '{job.device}') but the Ray "
        f"instance started on this machine has {largest} per node; set device: cpu or ray.num_gpus to what it has"
    )


def group_key(group: tuple[ModelSpec, SAESpec]) -> str:
    """A short, stable name for a (model, SAE) group (in actor names and logs)."""
    model, sae = group
    return digest([model.model_dump(mode="json"), sae.model_dump(mode="json")])[:12]


class ShardServer:
    """The body of a worker actor: one `Worker` (model, SAEs, statistics) serving many shards.

    Construction only imports the heavy libraries, so every actor does that in parallel;
    `load` builds the Worker (and, for a group's first actor, its reference statistics).
    """

    def __init__(self):
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import synthact.run.worker  # noqa: F401  (torch, transformer_lens, sae_lens)

    def load(self, job: Job, group: tuple[ModelSpec, SAESpec], stats_root: str, device: str) -> str:
        """Load the group's model, SAEs and statistics; return this actor's node id."""
        self.worker = load_worker(job, group, stats_root, device)
        return ray.get_runtime_context().get_node_id()

    def run_shard(self, shard: Shard):
        return self.worker.run_shard(shard)


@dataclass
class Slot:
    """One worker actor: spawned (importing), loading (its Worker), or ready, and its queued shards."""

    actor: ray.actor.ActorHandle
    group: str
    load_ref: ray.ObjectRef | None = None
    ready: bool = False
    node_id: str | None = None
    in_flight: dict[ray.ObjectRef, Shard] = field(default_factory=dict)

    @property
    def loading(self) -> bool:
        return self.load_ref is not None


class Dispatcher:
    """Keeps every actor busy with shards of its group, bounded in flight; retries; writes results."""

    def __init__(self, job: Job, plan: Plan, stats_root: str, bar: Progress, listeners: list[CellListener], gpus: float):
        self.job, self.plan, self.stats_root, self.bar, self.listeners = job, plan, stats_root, bar, listeners
        self.groups: dict[str, tuple[ModelSpec, SAESpec]] = {}
        self.queues: dict[str, deque[Shard]] = {}
        for shard in plan.pending:
            key = group_key(shard.cell.group)
            self.groups.setdefault(key, shard.cell.group)
            self.queues.setdefault(key, deque()).append(shard)
        self.attempts: dict[str, int] = {}
        self.stats_ready: set[str] = set()
        self.start_failures: dict[str, int] = {}
        self.slots: list[Slot] = []
        self.spawned = 0  # actors so far; each is named, so the dashboard shows which is which
        self.capacity = min(actor_capacity(job, gpus), len(plan.pending)) if plan.pending else 0
        self.device = "cpu" if gpus == 0 and job.device == "auto" else job.device
        self.server = ray.remote(ShardServer)
        # Ray restarts nothing by itself: this class replaces dead actors and retries their shards.
        self.actor_options = dict(
            num_gpus=gpus, num_cpus=job.ray.num_cpus, max_restarts=0, max_task_retries=0,
            scheduling_strategy="SPREAD",
        )

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        try:
            waited = 0.0
            while self._work_left():
                self._retire_idle()
                self._spawn_actors()
                self._load_actors()
                self._dispatch()
                t = time.perf_counter()
                ready, _ = ray.wait(self._watched(), num_returns=1, timeout=WAIT_NOTICE_S)
                waited = waited + time.perf_counter() - t if not ready else 0.0
                starting = sum(not s.ready for s in self.slots)
                if not ready and starting:
                    log.warning(
                        "nothing finished for %.0f s; %d worker actor(s) still starting or waiting for "
                        "resources (GPU nodes from the autoscaler?)", waited, starting,
                    )
                for ref in ready:
                    self._collect(ref)
        finally:
            with contextlib.suppress(RayError, ConnectionError):
                for slot in self.slots:
                    ray.kill(slot.actor)
            self.slots.clear()

    def _work_left(self) -> bool:
        return any(self.queues.values()) or any(s.in_flight for s in self.slots)

    def _watched(self) -> list[ray.ObjectRef]:
        refs = [s.load_ref for s in self.slots if s.loading]
        for s in self.slots:
            refs.extend(s.in_flight)
        return refs

    # ------------------------------------------------------------------ actors

    def _spawn_actors(self) -> None:
        """Fill free capacity with actors, each for the group with the most queued shards per actor."""
        while len(self.slots) < self.capacity:
            serving = {g: sum(s.group == g for s in self.slots) for g in self.queues}
            candidates = [g for g, q in self.queues.items() if q]
            if not candidates:
                return
            group = max(candidates, key=lambda g: len(self.queues[g]) / (serving[g] + 1))
            self.spawned += 1
            if not any(s.ready for s in self.slots):
                self.bar.phase(f"starting Ray worker actors ({len(self.slots) + 1} of {self.capacity})")
            name = f"synthact-worker-{group}-{self.spawned}-{uuid.uuid4().hex[:6]}"
            self.slots.append(Slot(actor=self.server.options(name=name, **self.actor_options).remote(), group=group))

    def _load_actors(self) -> None:
        """Load spawned actors: one per group until its statistics exist (it computes them), then all."""
        for slot in self.slots:
            if slot.ready or slot.loading:
                continue
            first_busy = any(s.loading for s in self.slots if s.group == slot.group)
            if slot.group in self.stats_ready or not first_busy:
                slot.load_ref = slot.actor.load.remote(self.job, self.groups[slot.group], self.stats_root, self.device)
                if slot.group not in self.stats_ready:
                    self.bar.phase("loading the model and SAEs on a worker actor, which computes the reference "
                                   "statistics for the others")

    def _retire_idle(self) -> None:
        """Stop actors with nothing queued for their group, freeing their GPU for other groups."""
        for slot in list(self.slots):
            if not slot.loading and not slot.in_flight and not self.queues[slot.group]:
                self._drop(slot)

    def _drop(self, slot: Slot) -> None:
        ray.kill(slot.actor)
        self.slots.remove(slot)

    def _actor_loaded(self, slot: Slot) -> None:
        try:
            slot.node_id = ray.get(slot.load_ref)
        except RayError as e:
            self._actor_failed_to_load(slot, e)
            return
        slot.load_ref, slot.ready = None, True
        self.stats_ready.add(slot.group)
        self.bar.phase("scanning")
        log.debug("worker actor for group %s ready on node %s", slot.group, slot.node_id)

    def _actor_failed_to_load(self, slot: Slot, error: RayError) -> None:
        """Replace an actor that failed to load; after max_retries failures of the load itself, fail its group.

        An actor lost to its node (not its own fault) is replaced without counting.
        """
        self._drop(slot)
        message = error_message(error)
        if isinstance(error, RayActorError) and not error.actor_init_failed:
            log.warning("worker actor for group %s died while loading; replacing it: %s", slot.group, message)
            return
        n = self.start_failures[slot.group] = self.start_failures.get(slot.group, 0) + 1
        if n <= self.job.ray.max_retries:
            log.warning("worker actor for group %s failed to load (attempt %d), retrying: %s", slot.group, n, message)
            return
        queue = self.queues[slot.group]
        while queue:
            self.plan.failed(queue.popleft(), f"{message} (tried {n} times)")

    # ------------------------------------------------------------------ shards

    def _dispatch(self) -> None:
        for slot in self.slots:
            queue = self.queues[slot.group]
            while slot.ready and queue and len(slot.in_flight) < self.job.ray.max_in_flight:
                shard = queue.popleft()
                slot.in_flight[slot.actor.run_shard.remote(shard)] = shard

    def _collect(self, ref: ray.ObjectRef) -> None:
        slot = next(s for s in self.slots if ref == s.load_ref or ref in s.in_flight)
        if ref == slot.load_ref:
            self._actor_loaded(slot)
            return
        shard = slot.in_flight.pop(ref)
        try:
            table = ray.get(ref)
        except RayError as e:
            if isinstance(e, RayActorError) and slot in self.slots:
                log.warning("worker actor on node %s died; its shards go to other actors", slot.node_id)
                self._drop(slot)
                self._requeue_all(slot, e)
            self._retry_or_fail(shard, e)
            return
        self.plan.finished(shard, table, self.listeners)
        self.bar.update(shard)
        log.debug("shard %s ran on node %s", shard.shard_id, slot.node_id)

    def _requeue_all(self, slot: Slot, error: RayError) -> None:
        """A dead actor's other queued shards died with it."""
        for shard in slot.in_flight.values():
            self._retry_or_fail(shard, error)
        slot.in_flight.clear()

    def _retry_or_fail(self, shard: Shard, error: RayError) -> None:
        n = self.attempts[shard.shard_id] = self.attempts.get(shard.shard_id, 0) + 1
        message = error_message(error)
        if n > self.job.ray.max_retries:
            self.plan.failed(shard, f"failed {n} times; last error: {message}")
            return
        log.info("shard %s retried (attempt %d failed: %s)", shard.shard_id, n, message)
        self.queues[group_key(shard.cell.group)].appendleft(shard)


def actor_capacity(job: Job, gpus: float) -> int:
    """How many worker actors to ask for: `max_workers` if set, else as many as the cluster holds now.

    Actors that do not fit stay pending; on an autoscaling cluster that pending demand is what
    adds GPU nodes, so set `ray.max_workers` to the cluster's GPU worker cap there.
    """
    if job.ray.max_workers:
        return job.ray.max_workers
    total = ray.cluster_resources()
    resource, per_actor = ("GPU", gpus) if gpus > 0 else ("CPU", job.ray.num_cpus)
    return max(1, math.floor(total.get(resource, 0) / per_actor + 1e-9))


def error_message(error: RayError) -> str:
    """One line: the shard's own exception for task errors, the reason for actor deaths."""
    if isinstance(error, RayActorError):
        if error.actor_init_failed:  # the message ends with the constructor's exception
            return f"worker failed to start: {last_line(str(error))}"
        text = str(error)
        return f"worker actor died: {first_line(text)} {last_line(text)}".strip()
    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, SynthactError):
            return str(cause)
        return f"{type(cause).__name__}: {cause}" if cause is not None else last_line(str(error))
    return f"{type(error).__name__}: {first_line(str(error))}"

