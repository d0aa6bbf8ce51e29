"""The scan that starts at the target (`scan.start: target`, the authors' plateau code): x_n = T + n s (A - T)/||A - T||
in A's prompt, d_n = ||h_R(x_n) - h_R(x_0)||, read up to the point reaching A."""

import numpy as np
import pytest
import torch

from synthact.generation.kinds import from_provenance
from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.store import Store
from synthact.run.worker import Worker
from synthact.scan import scan_plain
from synthact.spec import parse_job
from tests.helpers import toy_job

STEP, STEPS = 0.5, 120


def job_from_target(**metrics):
    return parse_job(toy_job(
        name="from-target", read_layers=[-1], base_kinds=["real"],
        directions=["toward:real", "toward:synthetic_baseline"],
        scan={"name": "plateaus", "steps": STEPS, "step_size": STEP, "start": "target"},
        metrics=metrics, bases_per_cell=3, shard_size=3, reference={"n_prompts": 256}, device="cpu", wandb=False,
    ))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("from-target")
    job = job_from_target(cut="before_target", fallback="constant")
    assert run_local(job, Store(out, job), progress=False).ok
    return job, out, read_table(out).to_pandas()


def test_rows_record_the_start_and_the_metric_rules(run):
    _, _, df = run
    assert (df.scan_start == "target").all()
    assert (df.cut == "before_target").all() and (df.fallback == "constant").all()


def test_the_scan_runs_from_t_to_a_and_recomputes_on_the_plain_path(run):
    job, out, df = run
    worker = Worker(job, job.shards()[0].cell.group, str(out / "stats"))
    ctx = worker.context(1)
    for row in df.itertuples():
        a = from_provenance(row.base_kind, row.base_tokens, None, None, row.add_error, ctx, seed=row.base_seed)
        t = from_provenance(row.target_kind, row.target_tokens, row.target_latents, row.target_latent_values,
                            row.add_error, ctx, seed=row.target_seed)
        distance = float((a.double() - t.double()).norm())
        assert np.isclose(row.target_distance, distance, rtol=1e-5)
        assert row.target_step == int(np.floor(distance / STEP + 1e-9)) < STEPS
        d = ((a.double() - t.double()) / distance).float()  # from T towards A
        coeffs = torch.arange(STEPS + 1, dtype=torch.float32)[None] * STEP
        tokens = torch.as_tensor(np.asarray(row.base_tokens, dtype=np.int64))[None]  # T sits in A's prompt
        result = scan_plain(ctx.model, 1, [int(row.read_layer)], tokens, t[None], d[None], coeffs)
        recomputed, stored = result.l2[int(row.read_layer)][0].numpy(), np.asarray(row.l2_curve)
        assert np.abs(recomputed - stored).max() <= 1e-4 * max(stored.max(), 1e-6), row.target_kind
        # the point at target_step is the last one before passing A: within one step of A
        reaching = t.double() + row.target_step * STEP * d.double()
        assert float((reaching - a.double()).norm()) < STEP
        # cut before_target: the last point read is the one before it
        assert np.isclose(row.final_l2, stored[row.target_step - 1])
        from_base = scan_plain(ctx.model, 1, [int(row.read_layer)], tokens, a[None], -d[None], coeffs)
        assert np.abs(from_base.l2[int(row.read_layer)][0].numpy() - stored).max() > 1e-2  # not the scan from A


def test_start_target_needs_a_direction_with_a_target():
    with pytest.raises(ValueError, match="start 'target'"):
        parse_job(toy_job(directions=["isotropic"], scan={"start": "target"}))
