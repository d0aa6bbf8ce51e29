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
- driver peak RSS (MiB) before and after the sweep: if the driver's memory is bounded, the
  growth does not scale with --shards (compare two sizes).
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

    from synthact.ray_exec import connect, run_ray
    from synthact.store import Store

    job = bench_job(args.shards, args.workers, args.in_flight)
    with tempfile.TemporaryDirectory(prefix="synthact-bench-ray-") as tmp:
        out = args.out or f"{tmp}/out"
        started = connect(args.address)
        first_ready = FirstActorReady()
        logging.getLogger("synthact.ray_exec").addHandler(first_ready)
        logging.getLogger("synthact.ray_exec").setLevel(logging.DEBUG)
        try:
            rss_before = peak_rss_mib()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            summary = run_ray(job, Store(out, job), args.address, progress=False)
            cpu1, wall1 = time.process_time(), time.perf_counter()
        finally:
            logging.getLogger("synthact.ray_exec").removeHandler(first_ready)
            if started:
                ray.shutdown()
    n = max(summary.shards_done, 1)
    steady_wall, steady_cpu = wall1 - first_ready.wall, cpu1 - first_ready.cpu
    print(f"bench-ray: {summary.shards_done} shards done, {len(summary.failures)} failed, "
          f"{args.workers} CPU actors, {args.in_flight} in flight per actor")
    print(f"  whole run: wall {wall1 - wall0:.1f} s (first actor ready after {first_ready.wall - wall0:.1f} s), "
          f"driver CPU {cpu1 - cpu0:.1f} s = {1000 * (cpu1 - cpu0) / n:.2f} ms/shard")
    print(f"  once an actor is ready: {n / steady_wall:.1f} shards/s, wall {1000 * steady_wall / n:.2f} ms/shard, "
          f"driver CPU {1000 * steady_cpu / n:.2f} ms/shard")
    print(f"  driver peak RSS: {rss_before:.0f} MiB before the sweep, {peak_rss_mib():.0f} MiB after")
    return 0 if summary.ok and summary.shards_done == args.shards else 1


class FirstActorReady(logging.Handler):
    """Notes the wall and CPU clocks when the executor logs that its first worker actor is ready."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.wall = self.cpu = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.wall is None and record.msg.startswith("worker actor for group %s ready"):
            self.wall, self.cpu = time.perf_counter(), time.process_time()


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
