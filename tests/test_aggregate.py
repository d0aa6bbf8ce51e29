"""Aggregates and kind-vs-real comparison over a seeded Parquet dataset with the real row schema.

`make_job` and `write_results` are reused by the tracking, compare and report tests: they build
a results directory laid out like `synthact run`'s, with plausible plateau-then-blow-up curves
whose plateau length depends on the kind (real longest, gaussian shortest).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import ks_2samp

from synthact import aggregate, results
from synthact.errors import SynthactError
from synthact.metrics import curve_metrics
from synthact.spec import Job, parse_job

# Centre of the sigmoid blow-up, in steps (a later centre is a longer plateau), and its width
# (a narrower blow-up is a larger max_slope).
CENTRE = {"real": 12.0, "sae_recon": 11.5, "synthetic_structured": 10.5, "synthetic_baseline": 8.0, "gaussian": 4.0}
WIDTH = {"real": 1.0, "sae_recon": 1.1, "synthetic_structured": 1.3, "synthetic_baseline": 2.0, "gaussian": 3.0}
LIST_I32 = pa.list_(pa.int32())


def make_job(bases: int = 40, steps: int = 20, **overrides) -> Job:
    spec = {
        "name": "fake",
        "model": {"toy": {"n_layers": 4}},
        "sae": {"toy": {}},
        "corpus": {"toy": {}},
        "layers": [1],
        "read_layers": [2, -1],
        "base_kinds": ["real", "gaussian", "synthetic_baseline", "synthetic_structured"],
        "directions": ["toward:same", "isotropic"],
        "scan": {"steps": steps, "step_size": 0.5},
        "bases_per_cell": bases,
        "shard_size": bases // 2,
    } | overrides
    return parse_job(spec)


def shard_rows(job: Job, shard, seed: int = 0, keep_curves: bool = True) -> pa.Table:
    """Rows of one shard with every column of the result schema; curves from a seeded sigmoid process."""
    cell = shard.cell
    s = cell.settings()
    rng = np.random.default_rng([seed, shard.start, int(cell.cell_id, 16) % 2**31])
    n_steps, step = job.scan.steps, job.scan.step_size
    columns: dict[str, list] = {}
    for read_layer in (2, 3):
        b = shard.n_bases
        centre = rng.normal(CENTRE[cell.base_kind], 1.5, b) + (2.0 if cell.direction == "isotropic" else 0.0)
        height = rng.lognormal(np.log(10.0 * read_layer), 0.3, b)
        n = np.arange(n_steps + 1)
        width = rng.normal(WIDTH[cell.base_kind], 0.1, b)[:, None]
        curves = height[:, None] * (1 / (1 + np.exp(-(n - centre[:, None]) / width)) - 1 / (1 + np.exp(centre[:, None] / width)))
        curves = np.maximum(curves + rng.normal(0, 0.05, curves.shape), 0.0)
        curves[:, 0] = 0.0
        metrics = curve_metrics(curves, np.full(b, step))
        synthetic = cell.base_kind.startswith("synthetic")
        k = 8
        rows = {
            "cell_id": [cell.cell_id] * b, "shard_id": [shard.shard_id] * b,
            "model": [s["model"]] * b, "sae": [s["sae"]] * b, "layer": [cell.layer] * b, "read_layer": [read_layer] * b,
            "base_kind": [cell.base_kind] * b, "direction": [cell.direction] * b, "target_kind": [cell.target_kind] * b,
            "tol": [cell.tol] * b, "candidates": [cell.candidates] * b, "value_source": [cell.value_source] * b,
            "add_error": [cell.add_error] * b, "base_index": list(range(shard.start, shard.stop)),
            "seed": [job.seed] * b, "base_seed": rng.integers(0, 2**62, b).tolist(),
            "target_seed": rng.integers(0, 2**62, b).tolist(), "scan_mode": [job.scan.mode] * b,
            "steps": [n_steps] * b, "step_size": [step] * b,
            **{name: values.tolist() for name, values in metrics.items()},
            **{f"js_{m}": [None] * b for m in ("max_slope", "blowup_step", "plateau_len", "early_slope_ratio", "final")},
            "base_norm": rng.normal(50, 3, b).tolist(),
            "target_norm": rng.normal(50, 3, b).tolist() if cell.target_kind else [None] * b,
            "base_l0": rng.integers(5, 15, b).tolist() if synthetic else [None] * b,
            "target_l0": [None] * b, "direction_latent": [None] * b,
            "base_doc": rng.integers(0, 1000, b).tolist(), "base_offset": rng.integers(0, 50, b).tolist(),
            "base_tokens": rng.integers(0, 512, (b, job.n_ctx)).tolist(),
            "target_doc": [None] * b, "target_offset": [None] * b, "target_tokens": [None] * b,
            "base_latents": rng.integers(0, 512, (b, k)).tolist() if synthetic else [None] * b,
            "base_latent_values": rng.random((b, k)).tolist() if synthetic else [None] * b,
            "target_latents": [None] * b, "target_latent_values": [None] * b,
        }
        if keep_curves:
            rows["l2_curve"] = curves.tolist()
        rows["js_curve"] = [None] * b
        for name, values in rows.items():
            columns.setdefault(name, []).extend(values)
    return pa.table({name: pa.array(values, type=SCHEMA[name]) for name, values in columns.items()})


SCHEMA = {
    "cell_id": pa.string(), "shard_id": pa.string(), "model": pa.string(), "sae": pa.string(), "layer": pa.int32(),
    "read_layer": pa.int32(), "base_kind": pa.string(), "direction": pa.string(), "target_kind": pa.string(),
    "tol": pa.float64(), "candidates": pa.int32(), "value_source": pa.string(), "add_error": pa.bool_(),
    "base_index": pa.int32(), "seed": pa.int64(), "base_seed": pa.int64(), "target_seed": pa.int64(),
    "scan_mode": pa.string(), "steps": pa.int32(), "step_size": pa.float64(), "max_slope": pa.float64(),
    "blowup_step": pa.int32(), "plateau_len": pa.int32(), "early_slope_ratio": pa.float64(), "final_l2": pa.float64(),
    "js_max_slope": pa.float64(), "js_blowup_step": pa.int32(), "js_plateau_len": pa.int32(),
    "js_early_slope_ratio": pa.float64(), "js_final": pa.float64(), "base_norm": pa.float64(),
    "target_norm": pa.float64(), "base_l0": pa.int32(), "target_l0": pa.int32(), "direction_latent": pa.int32(),
    "base_doc": pa.int64(), "base_offset": pa.int64(), "base_tokens": LIST_I32, "target_doc": pa.int64(),
    "target_offset": pa.int64(), "target_tokens": LIST_I32, "base_latents": LIST_I32,
    "base_latent_values": pa.list_(pa.float32()), "target_latents": LIST_I32,
    "target_latent_values": pa.list_(pa.float32()), "l2_curve": pa.list_(pa.float32()), "js_curve": pa.list_(pa.float32()),
}


def write_results(job: Job, out: Path, seed: int = 0, keep_curves: bool = True) -> dict[str, pa.Table]:
    """Write every shard as `synthact run` lays it out; return each cell's rows."""
    cells: dict[str, list[pa.Table]] = {}
    for shard in job.shards():
        table = shard_rows(job, shard, seed, keep_curves)
        path = out / "results" / f"cell={shard.cell.cell_id}" / f"{shard.shard_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        cells.setdefault(shard.cell.cell_id, []).append(table)
    return {cid: pa.concat_tables(tables) for cid, tables in cells.items()}


def finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    job = make_job()
    out = tmp_path_factory.mktemp("out")
    write_results(job, out)
    return job, out, results.read_rows(out, curves=True)


def test_load_rows_reads_every_row_with_axes_and_curves(sweep):
    job, out, rows = sweep
    assert len(rows) == len(job.cells()) * job.bases_per_cell * 2
    assert set(rows.cell_id) == {c.cell_id for c in job.cells()}
    assert {"l2_curve", *results.AXES, *results.AGGREGATED} <= set(rows.columns)
    assert "base_tokens" not in rows.columns


def test_load_rows_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(SynthactError, match="synthact run"):
        results.read_rows(tmp_path)


def test_cell_aggregates_match_numpy(sweep):
    job, _, rows = sweep
    table = aggregate.cell_aggregates(rows)
    assert len(table) == len(job.cells()) * 2
    for cell in job.cells():
        for read_layer in (2, 3):
            got = table[(table.cell_id == cell.cell_id) & (table.read_layer == read_layer)].iloc[0]
            mine = rows[(rows.cell_id == cell.cell_id) & (rows.read_layer == read_layer)]
            for axis, value in cell.settings().items():
                assert got[axis] == value or (value is None and got[axis] is None)
            assert got["curves"] == job.bases_per_cell
            for metric in results.AGGREGATED:
                x = finite(mine[metric])
                assert got[f"{metric}_count"] == x.size
                assert got[f"{metric}_mean"] == pytest.approx(x.mean())
                assert got[f"{metric}_median"] == pytest.approx(np.median(x))
                assert got[f"{metric}_std"] == pytest.approx(x.std(ddof=1))
                for q in (5, 25, 75, 95):
                    assert got[f"{metric}_q{q:02d}"] == pytest.approx(np.quantile(x, q / 100))
                half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
                assert got[f"{metric}_ci_low"] <= x.mean() <= got[f"{metric}_ci_high"]
                assert got[f"{metric}_ci_high"] - got[f"{metric}_ci_low"] == pytest.approx(2 * half, rel=0.3, abs=1e-9)


def test_summarize_edge_cases():
    assert aggregate.summarize([])["count"] == 0 and math.isnan(aggregate.summarize([])["mean"])
    one = aggregate.summarize([2.0, float("nan")])
    assert one["count"] == 1 and one["mean"] == 2.0 and math.isnan(one["ci_low"])
    same = aggregate.summarize([3.0] * 5)
    assert same["ci_low"] == same["ci_high"] == 3.0


def test_curve_bands_are_mean_and_quantiles_of_curves(sweep):
    _, _, rows = sweep
    bands = aggregate.curve_bands(rows)
    assert len(bands) == rows.groupby(["cell_id", "read_layer"]).ngroups
    row = bands.iloc[3]
    curves = np.stack(rows[(rows.cell_id == row.cell_id) & (rows.read_layer == row.read_layer)].l2_curve.to_list())
    np.testing.assert_allclose(row["mean"], curves.mean(0), rtol=1e-6)
    np.testing.assert_allclose(row["q05"], np.quantile(curves.astype(np.float64), 0.05, axis=0), rtol=1e-6)
    assert np.all(row["q05"] <= row["q95"])
    assert aggregate.curve_bands(rows.drop(columns="l2_curve")).empty


def test_compare_to_real_matches_scipy(sweep):
    job, _, rows = sweep
    table = aggregate.compare_to_real(rows)
    non_real = [c for c in job.cells() if c.base_kind != "real"]
    assert len(table) == len(non_real) * 2 * len(results.COMPARED)
    r = table[(table.base_kind == "gaussian") & (table.metric == "max_slope")].iloc[0]
    panel = rows[(rows.direction == r.direction) & (rows.read_layer == r.read_layer)]
    x = panel[panel.base_kind == "gaussian"].max_slope.to_numpy()
    y = panel[panel.base_kind == "real"].max_slope.to_numpy()
    ks = ks_2samp(x, y)
    assert r.ks_stat == pytest.approx(ks.statistic) and r.ks_pvalue == pytest.approx(ks.pvalue)
    assert r.mean_diff == pytest.approx(x.mean() - y.mean())
    assert r.diff_ci_low < r.mean_diff < r.diff_ci_high
    assert r.n == r.n_real == job.bases_per_cell


def test_verdicts_state_the_replication_targets(sweep):
    _, _, rows = sweep
    v = aggregate.verdicts(aggregate.compare_to_real(rows))
    panels = rows.groupby(list(aggregate.PANEL)).ngroups
    by_check = v.groupby("check").verdict.apply(list)
    # The fake data follows the paper: structured closer than baseline, shorter synthetic plateaus, gaussian far.
    assert by_check[aggregate.CHECK_STRUCTURE] == ["YES"] * panels
    assert by_check[aggregate.CHECK_PLATEAU] == ["YES"] * (2 * panels)
    assert by_check[aggregate.CHECK_GAUSSIAN] == ["YES"] * panels
    assert all(x.startswith("synthetic_structured") for x in by_check[aggregate.CHECK_CLOSEST])
    lines = aggregate.verdict_lines(v)
    assert len(lines) == len(v) + panels
    assert sum(line.startswith("[") and "->R" in line for line in lines) == panels


def test_verdicts_say_no_when_the_finding_fails(sweep):
    _, _, rows = sweep
    swapped = rows.copy()
    kinds = swapped.base_kind.map({"synthetic_structured": "synthetic_baseline", "synthetic_baseline": "synthetic_structured"})
    swapped["base_kind"] = kinds.fillna(swapped.base_kind)
    v = aggregate.verdicts(aggregate.compare_to_real(swapped))
    assert set(v[v.check == aggregate.CHECK_STRUCTURE].verdict) == {"NO"}


def test_generation_settings_are_distinct_variants(tmp_path):
    job = make_job(bases=10, base_kinds=["real", "synthetic_structured"], directions=["toward:same"],
                   generation={"candidates": [1, 16]})
    write_results(job, tmp_path)
    table = aggregate.compare_to_real(results.read_rows(tmp_path))
    assert set(table.variant) == {"synthetic_structured C=1 tol=0.1 sampled", "synthetic_structured C=16 tol=0.1 sampled"}
    assert pd.notna(table.ks_stat).all()
