"""Per-cell aggregates (cells.Sweep) and the kind-vs-real comparison over a seeded Parquet dataset with the
real row schema, checked against numpy and scipy on the rows read eagerly (results.read_table).

`make_job` and `write_results` are reused by the tracking, compare and report tests: they build
a results directory laid out like `synthact run`'s, with plausible plateau-then-blow-up curves
whose plateau length depends on the kind (real longest, gaussian shortest).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from synthact import results
from synthact.analysis import aggregate, inference, stats
from synthact.analysis.cells import Sweep
from synthact.errors import SynthactError
from tests.helpers import PAPER_SCANS, TOWARD, finite, make_job, write_results


def rows_of(out):
    """Every row of a results directory as a frame (the eager reader: for checking the bounded path)."""
    wanted = ["cell_id", *results.AXES, *results.PROVENANCE, *results.METRICS, "l2_curve"]
    return results.read_table(out, wanted).to_pandas()

# Centre of the sigmoid blow-up, in steps (a later centre is a longer plateau), and its width
# (a narrower blow-up is a larger max_slope).


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    job = make_job(directions=TOWARD, scan=PAPER_SCANS)
    out = tmp_path_factory.mktemp("out")
    write_results(job, out)
    return job, out, rows_of(out)


def test_sweep_holds_every_cell_and_read_layer(sweep):
    job, out, rows = sweep
    table = Sweep.open(out).aggregates
    assert len(rows) == len(job.cells()) * job.bases_per_cell * 2 == table.curves.sum()
    assert set(table.cell_id) == {c.cell_id for c in job.cells()}
    assert "base_tokens" not in table.columns and "values_max_slope" not in table.columns
    assert set(table.scan_mode) == {"step", "interpolate"}  # what verdicts pick experiments by


def test_opening_a_directory_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(SynthactError, match="synthact run"):
        Sweep.open(tmp_path)


def test_cell_aggregates_match_numpy(sweep):
    job, out, rows = sweep
    table = Sweep.open(out).aggregates
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
                assert got[f"{metric}_mean_lo"] <= x.mean() <= got[f"{metric}_mean_hi"]
                assert got[f"{metric}_mean_hi"] - got[f"{metric}_mean_lo"] == pytest.approx(2 * half, rel=0.3, abs=1e-9)


def test_summarize_edge_cases():
    assert stats.summarize([])["count"] == 0 and math.isnan(stats.summarize([])["mean"])
    one = stats.summarize([2.0, float("nan")])
    assert one["count"] == 1 and one["mean"] == 2.0 and math.isnan(one["mean_lo"])
    same = stats.summarize([3.0] * 5)
    assert same["mean_lo"] == same["mean_hi"] == 3.0


def test_curve_bands_are_mean_and_quantiles_of_curves(sweep):
    _, out, rows = sweep
    bands = Sweep.open(out).bands()
    assert len(bands) == rows.groupby(["cell_id", "read_layer"]).ngroups
    for i in (0, 3, len(bands) - 1):
        row = bands.iloc[i]
        mine = rows[(rows.cell_id == row.cell_id) & (rows.read_layer == row.read_layer)]
        curves = np.stack(mine.l2_curve.to_list()).astype(np.float64)
        assert row["direction"] == mine.direction.iloc[0]
        np.testing.assert_allclose(row["mean"], curves.mean(0), rtol=1e-6)
        for band, q in (("q05", 0.05), ("median", 0.5), ("q95", 0.95)):
            np.testing.assert_allclose(row[band], np.quantile(curves, q, axis=0), rtol=1e-6)
        assert np.all(row["q05"] <= row["q95"])


def test_no_bands_without_curves(tmp_path):
    write_results(make_job(bases=4, directions=["toward:same"]), tmp_path, keep_curves=False)
    assert Sweep.open(tmp_path).bands().empty


def test_compare_kinds_matches_scipy_on_both_axes(sweep):
    job, out, rows = sweep
    table = aggregate.compare_kinds(Sweep.open(out))
    targets = [c for c in job.cells() if c.base_kind == "real" and c.target_kind not in (None, "real")]
    bases = [c for c in job.cells() if c.base_kind != "real"]
    assert (table.axis == "target").sum() >= len(targets) * 2 * len(results.COMPARED)
    assert (table.axis == "base").sum() == len(bases) * 2 * len(results.COMPARED)
    for axis, subject, reference in (("base", rows.base_kind == "gaussian", rows.base_kind == "real"),
                                     ("target", rows.target_kind == "gaussian", rows.target_kind == "real")):
        kind = (table.base_kind == "gaussian") if axis == "base" else (table.base_kind == "real") & (
            table.target_kind == "gaussian")
        r = table[(table.axis == axis) & kind & (table.metric == "max_slope")].iloc[0]
        same = (rows.read_layer == r.read_layer) & (rows.scan == r.scan) & (
            (rows.direction == r.direction) if axis == "base" else (rows.base_kind == "real"))
        x = rows[same & subject & (rows.direction == r.direction)].max_slope.to_numpy()
        y = rows[same & reference].max_slope.to_numpy()
        ks = ks_2samp(x, y)
        assert r.ks_stat == pytest.approx(ks.statistic) and r.ks_pvalue == pytest.approx(ks.pvalue)
        assert r.mean_diff == pytest.approx(x.mean() - y.mean()) and r["std"] == pytest.approx(x.std(ddof=1))
        assert r.mean_diff_lo < r.mean_diff < r.mean_diff_hi
        assert r.n == r.n_real == job.bases_per_cell


def test_target_axis_compares_against_toward_real_only(sweep):
    _, out, _ = sweep
    table = aggregate.compare_kinds(Sweep.open(out))
    target = table[table.axis == "target"]
    assert set(target.target_kind) == {"gaussian", "synthetic_baseline", "synthetic_structured"}
    assert not target.variant.str.startswith("toward:real").any()
    assert paper_columns_are_empty(table)  # a toy sweep is not the paper's setting


def paper_columns_are_empty(table) -> bool:
    return table[["paper_mean", "paper_std", "paper_ks"]].isna().all().all()


def analysed(sweep: Sweep) -> tuple[pd.DataFrame, pd.DataFrame]:
    return aggregate.compare_kinds(sweep), aggregate.differences(sweep)


def test_verdicts_state_the_replication_targets(sweep):
    _, out, rows = sweep
    v = aggregate.verdicts(*analysed(Sweep.open(out)))
    by_check = v.groupby(["axis", "check"]).verdict.apply(list)
    # The fake data follows the paper along both axes: structured closer than baseline (where the interval
    # tells), shorter synthetic plateaus, gaussian far.
    for axis in ("target", "base"):
        subject = "target_kind" if axis == "target" else "base_kind"
        panels = [g for _, g in aggregate.panels(rows[rows.scan_mode == "interpolate"], axis)]  # slope: sensitivity
        with_pair = sum({"synthetic_structured", "synthetic_baseline"} <= set(g[subject]) and "real" in set(g[subject])
                        for g in panels)
        structure = by_check[(axis, aggregate.CHECK_STRUCTURE)]
        assert len(structure) == with_pair > 0 and set(structure) <= {"YES", "INCONCLUSIVE"}
        assert "YES" in by_check[(axis, aggregate.CHECK_PLATEAU)]
        assert set(by_check[(axis, aggregate.CHECK_PLATEAU)]) <= {"YES", "INCONCLUSIVE"}
        assert set(by_check[(axis, aggregate.CHECK_GAUSSIAN)]) == {"YES"}
        closest = v[(v.axis == axis) & (v.check == aggregate.CHECK_CLOSEST)]
        assert all(d.startswith(f"KS {x} ") for x, d in zip(closest.verdict, closest.detail))  # the smallest KS
        assert not closest.verdict.str.contains("gaussian").any()
    assert "YES" in by_check[("base", aggregate.CHECK_STRUCTURE)]


def test_plateau_verdicts_come_only_from_step_scans_and_slope_verdicts_only_from_interpolation(sweep):
    _, out, _ = sweep
    comparison, differences = analysed(Sweep.open(out))
    slope = [aggregate.CHECK_CLOSEST, aggregate.CHECK_STRUCTURE, aggregate.CHECK_GAUSSIAN]
    for mode, absent, present in (("interpolate", [aggregate.CHECK_PLATEAU], slope),
                                  ("step", slope, [aggregate.CHECK_PLATEAU])):  # a job with only this scan
        v = aggregate.verdicts(comparison[comparison.scan_mode == mode], differences[differences.scan_mode == mode])
        assert not v.check.isin(absent).any() and set(present) <= set(v.check), (mode, set(v.check))
        assert (v.scan_mode == mode).all()
    both = aggregate.verdicts(comparison, differences)
    assert set(both[both.check == aggregate.CHECK_PLATEAU].scan_mode) == {"step"}
    assert set(both[both.check.isin(slope)].scan_mode) == {"interpolate"}


def test_each_verdict_carries_the_numbers_it_rests_on(sweep):
    _, out, _ = sweep
    comparison, differences = analysed(Sweep.open(out))
    v = aggregate.verdicts(comparison, differences)
    assert list(v.columns) == aggregate.VERDICT_COLUMNS and (v.n > 0).all()
    for r in v[v.check == aggregate.CHECK_STRUCTURE].itertuples():
        keys = aggregate.panel_axes(differences, r.axis)
        same = np.logical_and.reduce([differences[k].astype(str) == str(getattr(r, k)) for k in keys])
        d = differences[same & (differences.axis == r.axis) & (differences.step == aggregate.STRUCTURE_STEP)
                        & (differences.metric == r.metric)].iloc[0]
        assert (r.estimate, r.lo, r.hi, r.p, r.p_holm, r.n) == pytest.approx(
            (d.ks_diff, d.ks_diff_lo, d.ks_diff_hi, d.ks_diff_p, d.ks_diff_p_holm, d.n))
        assert (r.verdict == "YES") == (r.hi < 0) and (r.verdict == "NO") == (r.lo > 0)
    plateau = v[v.check == aggregate.CHECK_PLATEAU]
    assert len(plateau) and (plateau.metric == "plateau_len").all() and plateau.p.between(0, 1).all()
    assert ((plateau.lo <= plateau.estimate) & (plateau.estimate <= plateau.hi)).all()
    closest = v[v.check == aggregate.CHECK_CLOSEST]
    assert closest.lo.isna().all() and closest.estimate.between(0, 1).all()
    gaussian = v[v.check == aggregate.CHECK_GAUSSIAN]
    assert ((gaussian.verdict == "YES") == (gaussian.p < aggregate.ALPHA)).all() and len(gaussian)


def test_verdicts_say_no_when_the_finding_fails(sweep):
    _, out, _ = sweep
    swapped = Sweep.open(out)  # the labels of the two synthetic kinds swapped, their values kept
    swap = {"synthetic_structured": "synthetic_baseline", "synthetic_baseline": "synthetic_structured"}
    for column in ("base_kind", "target_kind"):
        swapped.aggregates[column] = swapped.aggregates[column].map(lambda k: swap.get(k, k))
    v = aggregate.verdicts(*analysed(swapped))
    structure = v[v.check == aggregate.CHECK_STRUCTURE]
    assert set(structure.verdict) <= {"NO", "INCONCLUSIVE"} and "NO" in set(structure.verdict)
    assert set(structure.axis) == {"target", "base"}


def test_the_structure_verdict_follows_the_interval_of_the_ks_difference(sweep):
    _, out, _ = sweep
    comparison, differences = analysed(Sweep.open(out))
    steps = differences.index[(differences.step == aggregate.STRUCTURE_STEP) & (differences.axis == "target")]
    for (lo, hi), expected in (((-0.2, -0.01), "YES"), ((-0.1, 0.1), "INCONCLUSIVE"), ((0.02, 0.3), "NO")):
        differences.loc[steps, ["ks_diff_lo", "ks_diff_hi"]] = lo, hi
        v = aggregate.verdicts(comparison, differences)
        structure = v[(v.check == aggregate.CHECK_STRUCTURE) & (v.axis == "target")]
        sensitivity = differences.loc[steps].scan_mode == "interpolate"  # the slope verdicts' experiment
        assert len(structure) == sensitivity.sum() // len(results.COMPARED) > 0
        assert set(structure.verdict) == {expected}
        assert all(f"[{lo:+.3f}, {hi:+.3f}] (95% CI, paired)" in d for d in structure.detail)
        assert (structure.lo == lo).all() and (structure.hi == hi).all()


def aligned(rows, cell_ids, read_layer, metric) -> list[np.ndarray]:
    """Each cell's values of `metric`, aligned base by base (in base seed order), from the rows read eagerly."""
    mine = rows[rows.read_layer == read_layer]
    frames = [mine[mine.cell_id == c].set_index("base_seed")[metric].rename(c) for c in cell_ids]
    table = pd.concat(frames, axis=1, join="inner").sort_index()
    assert len(table) == len(frames[0])  # the cells were built for the same bases
    return [table[c].to_numpy(dtype=float) for c in cell_ids]


def test_differences_equal_inference_on_the_values_aligned_by_base(sweep):
    _, out, rows = sweep
    differences = aggregate.differences(Sweep.open(out))
    target = differences[differences.axis == "target"]
    assert target.paired.all() and not differences[differences.axis == "base"].paired.any()
    assert set(target.step) == {"R1 -> R2", "R1 -> other"}  # gaussian is a control: against R1
    for _, row in target[target.metric.isin(["max_slope_step", "plateau_len"])].iterrows():
        real = rows[(rows.base_kind == "real") & (rows.target_kind == "real") & (rows.read_layer == row.read_layer)
                    & (rows.scan == row.scan)]
        (real_cell,) = real.cell_id.unique()
        samples = aligned(rows, [real_cell, row.cell_a, row.cell_b], row.read_layer, row.metric)
        expected = inference.paired_difference(*samples, n_boot=aggregate.N_BOOT, seed=0,
                                               labels=(row.rung_a, row.rung_b if isinstance(row.rung_b, str) else "gaussian"))
        for key, value in expected.items():
            if key == "verdict":  # the pair's own verdict, then its Holm p across the grid
                assert row[key].startswith(value + ", Holm p = "), row[key]
            else:
                assert row[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_a_difference_that_does_not_survive_holm_says_so():
    shown = "R2 closer to real than R1: KS(R2) - KS(R1) = -0.150 [-0.300, -0.017] (95% CI), p = 0.011"
    assert aggregate.grid_verdict(shown, 0.49) == shown + ", Holm p = 0.49 (not significant across the grid)"
    assert aggregate.grid_verdict(shown, 0.02) == shown + ", Holm p = 0.02"
    none = "no detectable difference: KS(R2) - KS(R1) = +0.050 [-0.100, +0.200] (95% CI), p = 0.28"
    assert aggregate.grid_verdict(none, 0.63) == none + ", Holm p = 0.63"


def test_holm_adjusts_over_every_panel_of_the_grid_one_family_per_metric(sweep):
    _, out, _ = sweep
    differences = aggregate.differences(Sweep.open(out))
    assert differences.groupby(["axis", "read_layer", "direction"], dropna=False).ngroups > 2
    for metric, rows in differences.groupby("metric"):
        for p in ("ks_diff_p", "mean_diff_p"):
            np.testing.assert_allclose(rows[f"{p}_holm"].astype(float), inference.holm(rows[p].astype(float)))
            one_panel = rows[(rows.axis == "target") & (rows.read_layer == 2)]
            alone = inference.holm(one_panel[p].astype(float))
            assert (one_panel[f"{p}_holm"].astype(float) >= alone - 1e-12).all()


def test_distances_to_real_have_permutation_p_and_mean_intervals_paired_where_the_bases_are_shared(sweep):
    _, out, rows = sweep
    comparison = aggregate.compare_kinds(Sweep.open(out))
    assert comparison[comparison.axis == "target"].paired.all()
    assert not comparison[comparison.axis == "base"].paired.any()
    assert not {"ks_ci_low", "ks_ci_high", "w_ci_low", "w_ci_high"} & set(comparison)  # uncalibrated: not given
    assert comparison.ks_perm_p.between(0, 1).all() and (comparison.mean_diff_lo <= comparison.mean_diff_hi).all()
    row = comparison[(comparison.axis == "target") & (comparison.target_kind == "gaussian")
                     & (comparison.metric == "max_slope_step")].iloc[0]
    real = rows[(rows.base_kind == "real") & (rows.target_kind == "real") & (rows.read_layer == row.read_layer)
                & (rows.scan == row.scan)]
    x, y = aligned(rows, [row.cell_id, real.cell_id.iloc[0]], row.read_layer, "max_slope_step")
    d = inference.distance_to_real(x, y, paired=True, n_perm=aggregate.N_PERM, seed=0)
    assert (row.ks_stat, row.ks_perm_p) == pytest.approx((d["ks"], d["ks_p"]))
    assert (row.mean_diff, row.mean_diff_lo, row.mean_diff_hi, row.mean_diff_p) == pytest.approx(
        (d["mean_diff"], d["mean_diff_lo"], d["mean_diff_hi"], d["mean_diff_p"]))


def test_generation_settings_are_distinct_variants(tmp_path):
    job = make_job(bases=10, base_kinds=["real", "synthetic_structured"], directions=["toward:same"],
                   generation={"structure": ["anchor", "pairwise"], "candidates": [1, 16], "value_source": ["sampled"]})
    write_results(job, tmp_path)
    table = aggregate.compare_kinds(Sweep.open(tmp_path))
    assert set(table.variant) == {"synthetic_structured anchor sampled", "synthetic_structured pairwise C=1 tol=0.1 sampled",
                                  "synthetic_structured pairwise C=16 tol=0.1 sampled"}, set(table.variant)
    assert pd.notna(table.ks_stat).all()
