"""Driver load benchmark of the Ray executor: thousands of tiny shards, driver CPU per shard and peak RSS.

The sweep is one cell of the toy model (layer 1, `real` bases, toward another real activation)
with one base per shard and a 2-step scan, so the workers' share per shard is as small as the
real code path allows and the driver's own cost shows: planning, dispatch, `ray.wait`/`ray.get`,
the atomic Parquet + manifest write of every shard, and the progress bar. It runs on CPU
actors of a local Ray instance (or `--address`) and prints:

- driver CPU ms per shard: CPU time (user + system, all threads) of this process during the
  sweep, divided by the number of shards — the driver's overhead per shard;
- wall ms per shard and shards/s: throughput, which on a small machine is bounded by the
  workers, not by the driver; reported for the whole run and from the moment the first
  actor is ready (actor start-up, i.e. importing torch and loading the model, excluded);
- driver RSS every 10% of the shards, and its peak before and after the sweep: bounded driver
  memory shows as a flat RSS while shards are dispatched and written. (When the one cell
  completes, the executor reads the cell back for cell listeners; that read, not dispatch,
  grows with the cell's size and shows in the last sample.)
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time

from synthact.spec import parse_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=int, default=5000, help="shards in the sweep (one base each; default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="CPU worker actors (default 2)")
    parser.add_argument("--in-flight", type=int, default=4, help="shards queued per actor (default 4)")
    parser.add_argument("--address", default="local", help="Ray address: 'local' (default), 'auto' or host:port")
    parser.add_argument("--out", help="output directory (default: a temporary directory, removed afterwards)")


def bench_job(shards: int, workers: int, in_flight: int):
    """The benchmark's sweep: `shards` one-base shards of one toy cell."""
    return parse_job(
        {
            "name": f"bench-ray-{shards}",
            "model": {"toy": {}},
            "sae": {"toy": {}},
            "corpus": {"toy": {}},
            "layers": [1],
            "base_kinds": ["real"],
            "directions": ["toward:same"],
            "scan": {"steps": 2},
            "bases_per_cell": shards,
            "shard_size": 1,
            "reference": {"n_prompts": 256},
            "device": "cpu",
            "wandb": False,
            "ray": {"num_gpus": 0, "num_cpus": 1, "max_workers": workers, "max_in_flight": in_flight, "max_retries": 0},
        },
        source="bench-ray job",
    )


def run(args: argparse.Namespace) -> int:
    import ray

    from synthact.run.ray_executor import connect, run_ray
    from synthact.run.store import Store

    job = bench_job(args.shards, args.workers, args.in_flight)
    logger = logging.getLogger("synthact.run.ray_executor")
    probe = Probe(every=max(args.shards // 10, 1))
    with tempfile.TemporaryDirectory(prefix="synthact-bench-ray-") as tmp:
        out = args.out or f"{tmp}/out"
        started = connect(args.address)
        logger.addHandler(probe)
        logger.setLevel(logging.DEBUG)
        try:
            rss_before = peak_rss_mib()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            summary = run_ray(job, Store(out, job), args.address, progress=False)
            cpu1, wall1 = time.process_time(), time.perf_counter()
        finally:
            logger.removeHandler(probe)
            if started:
                ray.shutdown()
    n = max(summary.shards_done, 1)
    ready_wall, ready_cpu = (probe.ready_wall, probe.ready_cpu) if probe.ready_wall else (wall0, cpu0)
    steady_wall, steady_cpu = wall1 - ready_wall, cpu1 - ready_cpu
    print(f"bench-ray: {summary.shards_done} shards done, {len(summary.failures)} failed, "
          f"{args.workers} CPU actors, {args.in_flight} in flight per actor")
    print(f"  whole run: wall {wall1 - wall0:.1f} s (first actor ready after {ready_wall - wall0:.1f} s), "
          f"driver CPU {cpu1 - cpu0:.1f} s = {1000 * (cpu1 - cpu0) / n:.2f} ms/shard")
    print(f"  once an actor is ready: {n / steady_wall:.1f} shards/s, wall {1000 * steady_wall / n:.2f} ms/shard, "
          f"driver CPU {1000 * steady_cpu / n:.2f} ms/shard")
    print("  driver RSS (MiB) after N shards: " + ", ".join(f"{k}: {v:.0f}" for k, v in probe.rss))
    print(f"  driver peak RSS: {rss_before:.0f} MiB before the sweep, {peak_rss_mib():.0f} MiB after")
    return 0 if summary.ok and summary.shards_done == args.shards else 1


class Probe(logging.Handler):
    """Reads the executor's log: when the first worker actor is ready, and the driver's RSS every `every` shards."""

    def __init__(self, every: int):
        super().__init__(logging.DEBUG)
        self.every, self.shards = every, 0
        self.ready_wall = self.ready_cpu = None
        self.rss: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.ready_wall is None and record.msg.startswith("worker actor for group %s ready"):
            self.ready_wall, self.ready_cpu = time.perf_counter(), time.process_time()
        elif record.msg.startswith("shard %s ran on node"):
            self.shards += 1
            if self.shards % self.every == 0:
                self.rss.append((self.shards, current_rss_mib()))


def current_rss_mib() -> float:
    """This process's resident set size now."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
