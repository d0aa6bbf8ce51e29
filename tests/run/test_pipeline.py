"""The local pipeline end to end on the toy backend: rows, determinism, resume, recompute."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from synthact.generation.directions import direction_from_provenance
from synthact.generation.kinds import from_provenance
from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.store import Store
from synthact.run.worker import Worker
from synthact.scan import scan_plain
from synthact.scan.metrics import curve_metrics
from synthact.spec import KINDS, MetricsSpec, parse_job
from tests.helpers import toy_job

DIRECTIONS = ["toward:same", "toward:real", "toward:synthetic_structured", "isotropic", "latent:random", "latent:3",
              "toward_recon"]


def tiny_job(**overrides):
    return parse_job(toy_job(
        name="tiny", read_layers=[2, -1], base_kinds=list(KINDS), directions=DIRECTIONS,
        scan={"steps": 20, "step_size": 0.5}, js=True, bases_per_cell=4, shard_size=2,
        reference={"n_prompts": 256}, device="cpu", wandb=False, **overrides,
    ))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    job = tiny_job()
    summary = run_local(job, Store(out, job), progress=False)
    return job, out, summary, read_table(out)


def test_every_cell_and_curve_is_written(run):
    job, _, summary, table = run
    assert summary.ok and summary.shards_done == len(job.shards())
    assert table.num_rows == len(job.cells()) * job.bases_per_cell * len(job.read_layers)
    df = table.to_pandas()
    assert set(df.base_kind) == set(KINDS) and set(df.direction) == set(DIRECTIONS)
    assert set(df.read_layer) == {2, 3}
    assert not df.duplicated(["cell_id", "base_index", "read_layer"]).any()
    curves = np.stack(df.l2_curve.to_numpy())
    assert curves.shape[1] == job.scan[0].steps + 1 and np.all(curves[:, 0] == 0) and np.isfinite(curves).all()
    js = np.stack(df.js_curve.to_numpy())
    assert np.all(js[:, 0] == 0) and js.min() >= 0 and js.max() <= 1
    for col in ["max_slope_step", "max_slope", "plateau_len", "final_l2", "js_max_slope_step", "base_norm"]:
        assert df[col].notna().all(), col
    # early_slope_ratio is undefined (NaN) exactly where the curve has no step before the target
    assert (df.early_slope_ratio.isna() == (df.target_step == 0)).all()
    toward = df[df.direction.str.startswith("toward")]
    assert toward.target_distance.notna().all() and toward.target_step.notna().all()
    assert np.array_equal(toward.target_step, np.floor(toward.target_distance / 0.5).astype(int))
    assert df[~df.direction.str.startswith("toward")].target_step.isna().all()


def test_metrics_read_the_curve_up_to_the_target(run):
    _, _, _, table = run
    df = table.to_pandas()
    curves = np.stack(df.l2_curve.to_numpy())
    last = np.where(df.target_step.isna(), df.steps, np.minimum(df.target_step.fillna(0), df.steps)).astype(int)
    m = curve_metrics(curves, df.step_size.to_numpy(), last=last, settings=MetricsSpec())
    for name in ("max_slope_step", "plateau_len", "final_l2"):
        assert np.array_equal(m[name], df[name].to_numpy()), name


def test_paired_targets_share_the_base_code(run):
    _, _, _, table = run
    df = table.to_pandas()
    paired = df[(df.base_kind == "real") & (df.target_kind == "synthetic_structured")]
    assert len(paired) and (paired.template == "base").all() and (paired.structure == "anchor").all()
    assert (paired.target_l0 == paired.base_l0).all()
    assert all(np.array_equal(a, b) for a, b in zip(paired.target_tokens, paired.base_tokens))


def test_provenance_columns(run):
    _, _, _, table = run
    df = table.to_pandas()
    assert df.base_tokens.map(len).eq(10).all()
    sae_built = df[df.base_kind.isin(["sae_recon", "synthetic_baseline", "synthetic_structured", "random_latents",
                                      "single_latent"])]
    assert sae_built.base_latents.map(len).gt(0).all()
    assert (sae_built.base_latents.map(len) == sae_built.base_latent_values.map(len)).all()
    assert (df[df.base_kind == "single_latent"].base_l0 == 1).all()
    prompt_targets = df[df.target_kind.isin(["real", "sae_recon"])]
    assert prompt_targets.target_tokens.map(len).eq(10).all()
    assert df[df.direction == "latent:random"].direction_latent.notna().all()


def test_same_shard_gives_identical_rows(run, tmp_path):
    job, out, _, table = run
    worker = Worker(job, job.shards()[0].cell.group, str(out / "stats"))
    for shard in job.shards()[::7]:
        again = worker.run_shard(shard)
        stored = table.filter(pa.compute.equal(table["shard_id"], shard.shard_id))
        assert nan_as_text(again.select(stored.column_names).to_pylist()) == nan_as_text(stored.to_pylist())


def nan_as_text(rows: list[dict]) -> list[dict]:
    """Rows with NaN floats spelled 'nan', so that equal rows compare equal (NaN != NaN in Python)."""
    return [{k: "nan" if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]


def test_rerun_resumes_and_adds_nothing(run):
    job, out, _, table = run
    again = run_local(job, Store(out, job), progress=False)
    assert again.shards_done == 0 and again.shards_skipped == len(job.shards())
    assert read_table(out).num_rows == table.num_rows


def test_stored_rows_recompute_with_the_plain_path(run):
    job, out, _, table = run
    worker = Worker(job, job.shards()[0].cell.group, str(out / "stats"))
    ctx = worker.context(1)
    df = table.to_pandas()
    picked = df.groupby(["base_kind", "direction"]).head(1)
    assert len(picked) == len(KINDS) * len(DIRECTIONS)
    for _, row in picked.iterrows():
        a = from_provenance(row.base_kind, row.base_tokens, row.base_latents, row.base_latent_values,
                            row.add_error, ctx, seed=row.base_seed)
        target = None
        if isinstance(row.target_kind, str):
            target = from_provenance(row.target_kind, row.target_tokens, row.target_latents,
                                     row.target_latent_values, row.add_error, ctx, seed=row.target_seed)
        latent = None if np.isnan(row.direction_latent) else int(row.direction_latent)
        d = direction_from_provenance(row.direction, a, ctx, target_vector=target, target_seed=row.target_seed,
                                      latent=latent)
        coeffs = torch.arange(int(row.steps) + 1, dtype=torch.float32)[None] * row.step_size
        tokens = torch.as_tensor(np.asarray(row.base_tokens, dtype=np.int64))[None]
        result = scan_plain(ctx.model, 1, [int(row.read_layer)], tokens, a[None], d[None], coeffs)
        recomputed = result.l2[int(row.read_layer)][0].numpy()
        stored = np.asarray(row.l2_curve)
        assert np.abs(recomputed - stored).max() <= 1e-4 * max(stored.max(), 1e-6), (row.base_kind, row.direction)
