"""Curve metrics against hand-computed curves (docs/science.md, "Curve metrics")."""

import numpy as np

from synthact.scan.metrics import curve_metrics, last_point
from synthact.spec import MetricsSpec

RELATIVE = MetricsSpec(plateau_threshold=0.1, plateau_mode="relative")
AUTHORS = MetricsSpec(cut="before_target", fallback="constant")


def test_plateau_then_blowup():
    n = np.arange(101, dtype=float)
    flat_then_jump = 10.0 / (1.0 + np.exp(-(n - 40.5)))  # a plateau, then a blow-up between n = 40 and 41
    linear = 2.0 * n
    m = curve_metrics(np.stack([flat_then_jump, linear]), np.array([0.5, 0.5]), settings=RELATIVE)
    assert m["max_slope_start"][0] == 40
    assert m["max_slope_step"][0] == 41  # s_41 = d_41 - d_40 is the largest slope
    assert m["max_slope_step"][1] == 100  # every slope ties: the latest step
    assert np.isclose(m["max_slope"][0], np.diff(flat_then_jump).max() / 0.5)
    assert np.isclose(m["max_slope"][1], 2.0 / 0.5)
    final = flat_then_jump[-1]
    assert m["plateau_len"][0] == np.argmax(flat_then_jump >= 0.1 * final)
    assert m["plateau_len"][1] == 10  # 2n >= 0.1 * 200
    assert m["early_slope_ratio"][0] < 0.01 and np.isclose(m["early_slope_ratio"][1], 1.0)
    assert np.allclose(m["final_l2"], [final, 200.0])


def test_absolute_plateau_threshold():
    d = np.array([[0.0, 5.0, 12.0, 19.9, 20.0, 30.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    m = curve_metrics(d, np.array([0.5, 0.5]))  # the paper: first n with d_n >= 20
    assert m["plateau_len"].tolist() == [4, 6]  # never reached: the number of points


def test_flat_curve_takes_the_last_step():
    m = curve_metrics(np.full((1, 100), 3.0), np.array([1.0]))
    assert m["max_slope_step"][0] == 99  # no slope above 0.02: N - 1 of a 100-point scan
    assert m["max_slope"][0] == 0 and np.isnan(m["early_slope_ratio"][0])
    below = curve_metrics(0.01 * np.arange(100.0)[None], np.array([1.0]))  # slopes 0.01 < 0.02
    assert below["max_slope_step"][0] == 99
    above = curve_metrics(0.25 * np.arange(100.0)[None], np.array([1.0]))
    assert above["max_slope_step"][0] == 99  # all slopes tie above threshold: the latest


def test_padding_of_s0():
    d = np.array([[0.0, 5.0, 6.0, 7.0, 7.5]])  # s_1 = 5 is the largest; s_0 := s_1 ties with it
    m = curve_metrics(d, np.array([1.0]))
    assert m["max_slope_step"][0] == 1


def test_curve_cut_at_the_target():
    d = np.array([[0.0, 0.1, 0.2, 5.0, 25.0, 100.0], [0.0, 0.0, 0.0, 0.0, 50.0, 90.0]])
    m = curve_metrics(d, np.array([0.5, 0.5]), last=np.array([3, 3]))
    assert m["max_slope_step"].tolist() == [3, 3]  # curve 1: s_3 = 4.8; curve 2: flat up to n = 3 -> last
    assert m["plateau_len"].tolist() == [4, 4]  # 20 is only reached after the target: the number of points
    assert np.allclose(m["final_l2"], [5.0, 0.0])
    assert np.isclose(m["max_slope"][0], 4.8 / 0.5)
    at_start = curve_metrics(d, np.array([0.5, 0.5]), last=np.array([0, 0]))  # target nearer than one step
    assert at_start["max_slope_step"].tolist() == [0, 0] and at_start["plateau_len"].tolist() == [1, 1]


def test_per_curve_step_and_js_names():
    curves = np.array([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]])
    m = curve_metrics(curves, np.array([1.0, 2.0]), js=True)
    assert np.allclose(m["js_max_slope"], [2.0, 1.0])
    assert set(m) == {"js_max_slope_step", "js_max_slope", "js_max_slope_start", "js_plateau_len",
                      "js_early_slope_ratio", "js_final"}


def test_constant_curve_has_no_ratio():
    m = curve_metrics(np.zeros((1, 11)), np.array([0.5]), settings=RELATIVE)
    assert m["max_slope"][0] == 0 and np.isnan(m["early_slope_ratio"][0]) and m["plateau_len"][0] == 0


# Three plateau curves stopping at the target's point 4 (d_4 is the point at the target):
# crosses 20 at n = 2; crosses 20 only at the target's point; never crosses 20 before the target.
RULE_CURVES = np.array([
    [0.0, 5.0, 25.0, 30.0, 31.0, 32.0, 40.0],
    [0.0, 1.0, 2.0, 3.0, 22.0, 40.0, 60.0],
    [0.0, 0.01, 0.02, 0.03, 0.04, 50.0, 90.0],
])


def test_cut_and_fallback_rules_give_their_known_values():
    step, stop = np.full(3, 0.5), np.full(3, 4)
    ours = MetricsSpec()
    m = curve_metrics(RULE_CURVES, step, last=last_point(stop, 6, ours), settings=ours)
    # synthact: reads d_0..d_4; curve 2 crosses at the target's point; curve 3 never: the 5 points read
    assert m["plateau_len"].tolist() == [2, 4, 5]
    assert m["max_slope_step"].tolist() == [2, 4, 4]  # curve 3: slopes 0.01 < 0.02 -> the last point read
    theirs = curve_metrics(RULE_CURVES, step, last=last_point(stop, 6, AUTHORS), settings=AUTHORS)
    # the authors: l2s[:4] reads d_0..d_3, so curve 2 no longer crosses; no crossing -> 100 and 99
    assert theirs["plateau_len"].tolist() == [2, 100, 100]
    assert theirs["max_slope_step"].tolist() == [2, 3, 99]
    assert np.allclose(theirs["final_l2"], [30.0, 3.0, 0.03])


def test_cut_applies_only_to_scans_that_stop_at_the_target():
    assert last_point(None, 99, AUTHORS) is None  # interpolation: every point, whatever the cut
    assert last_point(np.array([0, 3, 150]), 100, AUTHORS).tolist() == [0, 2, 99]  # never before d_0
    assert last_point(np.array([0, 3, 150]), 100, MetricsSpec()).tolist() == [0, 3, 100]


def test_older_results_read_blowup_step_as_max_slope_start(tmp_path):
    import pyarrow.parquet as pq

    from synthact import results
    from synthact.run.store import Store
    from tests.helpers import make_job, write_results

    job = make_job(bases=4)
    write_results(job, tmp_path)
    expected = results.read_rows(tmp_path).max_slope_start.to_numpy()
    for shard in job.shards():  # as synthact wrote them before the rename
        table = pq.read_table(Store(tmp_path, job).shard_file(shard))
        Store(tmp_path, job).write_shard(shard, table.rename_columns(
            [{v: k for k, v in results.RENAMED.items()}.get(c, c) for c in table.column_names]))
    assert "blowup_step" in pq.read_schema(next((tmp_path / "results").rglob("*.parquet"))).names
    assert np.array_equal(results.read_rows(tmp_path).max_slope_start.to_numpy(), expected)
