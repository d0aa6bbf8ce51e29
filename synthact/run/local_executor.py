"""The local executor: every pending shard in this process, one worker per (model, SAE) group."""

from __future__ import annotations

import time

from synthact.errors import SynthactError, first_line
from synthact.run.plan import CellListener, Plan, Progress, RunSummary, progress_of
from synthact.run.store import Store
from synthact.spec import Job, parse_direction, target_kind


def run_local(job: Job, store: Store, progress: bool | Progress = True,
              listeners: list[CellListener] | None = None) -> RunSummary:
    """Run every pending shard in this process, one worker per (model, SAE) group.

    A group whose worker cannot load fails its shards only; the other groups run. `progress`: show phases and a
    bar (or the caller's `Progress`: its bar closes at the end, the caller's later phases follow as lines).
    """
    listeners = listeners or []
    start = time.perf_counter()
    bar = progress_of(progress)
    bar.phase(f"checking the finished shards of {store.uri}")
    store.discard_damaged_stats()
    plan = Plan(job, store)
    if plan.complete_at_start and listeners:
        bar.phase(f"W&B: logging the {len(plan.complete_at_start)} cells finished before")
    plan.announce_complete_cells(listeners)
    bar.start(plan)
    try:
        for group, shards in plan.by_group().items():
            try:
                worker = load_worker(job, group, store.stats_root, phase=bar.phase)
            except SynthactError as e:
                plan.group_failed(shards, str(e))
                continue
            bar.phase("scanning")
            for shard in shards:
                try:
                    table = worker.run_shard(shard)
                except SynthactError as e:
                    plan.failed(shard, str(e))
                    continue
                except Exception as e:  # a bug or a device fault: keep going, report at the end
                    plan.failed(shard, e)
                    continue
                plan.finished(shard, table, listeners)
                bar.update(shard)
    finally:
        bar.close()
        plan.summary.wall_s = time.perf_counter() - start
    return plan.summary


def load_worker(job: Job, group: tuple, stats_root: str, device: str | None = None, phase=None):
    """Build a group's `Worker` and check the job against what it loaded, before its first shard.

    Every failure is one SynthactError paragraph (both executors report it for the group's shards). `phase`
    is told what loads (`Progress.phase`).
    """
    from synthact.run.worker import Worker

    model, sae = group
    try:
        worker = Worker(job, group, stats_root, device, phase=phase)
    except SynthactError:
        raise
    except Exception as e:  # a damaged checkpoint, a refused pickle, a device that does not exist, ...
        where = " ".join(f"{what} '{path}'" for what, path in (("model", model.local), ("SAE", sae.local)) if path)
        raise SynthactError(
            f"could not load model '{model.label}' with SAE '{sae.label}' ({type(e).__name__}: "
            f"{first_line(str(e))[:300].rstrip('.')}). Check {where or 'the job spec'}: the files must be complete "
            "(safetensors; pickled .bin checkpoints are refused), and the job's device must exist here"
        ) from None
    preflight(job, worker)
    return worker


def preflight(job: Job, worker) -> None:
    """What the spec cannot know before loading: n_ctx against the model's; per SAE, latent ids against d_sae, and
    alive latents enough for the SAE-built kinds and their nearest_k / anchor_pool. (Model and SAE weights are
    checked finite as they load, before the reference statistics: `inputs.checkpoint`, `inputs.saes`.)"""
    model = worker.backend.model
    if model.model.cfg.n_ctx < job.n_ctx:
        raise SynthactError(
            f"n_ctx {job.n_ctx} is longer than model '{model.label}' allows ({model.model.cfg.n_ctx}); lower n_ctx"
        )
    latents = [int(arg) for head, arg in map(parse_direction, job.directions) if head == "latent" and arg != "random"]
    for layer, loaded in worker.backend.saes.items():
        where = f"SAE '{loaded.label}' (layer {layer})"
        d_sae = loaded.sae.W_dec.shape[0]
        too_big = [i for i in latents if i >= d_sae]
        if too_big:
            raise SynthactError(
                f"direction latent:{too_big[0]} does not exist in SAE '{loaded.label}' with {d_sae} latents "
                f"(valid: latent:0..latent:{d_sae - 1})"
            )
        _check_alive(job, worker.stats[layer], where)


SAE_BUILT = ("synthetic_baseline", "synthetic_structured", "random_latents", "single_latent")


def _sae_built_needs(job: Job) -> dict[str, int]:
    """The alive latents each SAE-built part of the job needs (what -> at least how many)."""
    kinds = set(job.base_kinds) | {target_kind(k, d) for k in job.base_kinds for d in job.directions}
    built = sorted(kinds & set(SAE_BUILT)) + (["latent:random"] if "latent:random" in job.directions else [])
    needs = {", ".join(built): 1} if built else {}
    gen = job.generation
    if "synthetic_baseline" in kinds and "nearest_k" in gen.match:
        needs[f"generation.nearest_k {max(gen.nearest_k)}"] = max(gen.nearest_k)
    if "synthetic_structured" in kinds and "anchor" in gen.structure:
        needs[f"generation.anchor_pool {max(gen.anchor_pool)}"] = max(gen.anchor_pool)
    return needs


def _check_alive(job: Job, stats, where: str) -> None:
    alive = int(stats.alive.numel())
    for what, need in _sae_built_needs(job).items():
        if alive < need:
            dead = "all its latents are dead" if alive == 0 else f"{alive} of its {stats.d_sae} latents are alive"
            raise SynthactError(
                f"{where}: {dead} (fired on the reference pool of {stats.n} prompts, or per the release's sparsity), "
                f"but {what} needs at least {need}. Use an SAE with more live latents, lower the setting, or drop "
                "the SAE-built kinds from base_kinds and directions"
            )
