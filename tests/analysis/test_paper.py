"""The paper's reported values are printed only beside rows of the authors' design: model, SAE, layers, scan
framing and metric rules (analysis/paper.py)."""

from __future__ import annotations

import pytest

from synthact.analysis import aggregate, compare, paper
from synthact.analysis.cells import Sweep
from tests.helpers import make_job, write_results

AUTHORS_RULES = {"slope_threshold": 0.02, "plateau_threshold": 20.0, "plateau_mode": "absolute",
                 "cut": "before_target", "fallback": "constant"}
PLATEAU_SCANS = [
    {"name": "plateaus", "mode": "step", "step_size": 0.5, "steps": 100, "start": "target"},  # the authors' code
    {"name": "plateaus-around-A", "mode": "step", "step_size": 0.5, "steps": 100, "start": "base"},  # the text
]


def gpt2_job(metrics: dict):
    """The paper's model, SAE and layer (parsed only: nothing is loaded), real bases, two plateau framings."""
    return make_job(bases=20, model={"pretrained": "gpt2"}, sae={"release": "gpt2-small-res-jb"},
                    corpus={"file": "tokens.npy"}, base_kinds=["real"],
                    directions=["toward:real", "toward:gaussian", "toward:synthetic_baseline"],
                    scan=PLATEAU_SCANS, metrics=metrics, read_layers=[-1])


def comparison_of(tmp_path, metrics: dict):
    write_results(gpt2_job(metrics), tmp_path, read_layers=(11,))  # GPT-2's last block
    comparison = aggregate.compare_kinds(Sweep.open(tmp_path), metrics=("plateau_len",))
    return comparison[comparison.axis == "target"]


def test_paper_values_are_printed_for_the_authors_framing_only(tmp_path):
    comparison = comparison_of(tmp_path, AUTHORS_RULES)
    theirs = comparison[comparison.scan == "plateaus"].set_index("target_kind")
    assert theirs.loc["gaussian", "paper_mean"] == 8.33 and theirs.loc["gaussian", "paper_ks"] == 0.568
    assert theirs.loc["synthetic_baseline", "paper_ks"] == 0.754 and theirs.loc["gaussian", "paper_mean_real"] == 15.12
    assert comparison[comparison.scan == "plateaus-around-A"].paper_mean.isna().all()
    text = compare.comparison_text(comparison, aggregate.verdicts(comparison))
    printed = [line for line in text.splitlines() if "vs real 15.1" in line]
    assert len(printed) == 2 and all(" plateaus real " in line for line in printed)
    assert "plateau around T (scan from T to A)" in text and "plateau around A (scan from A to T)" in text


@pytest.mark.parametrize("rule", [{"cut": "through_target"}, {"fallback": "last"}, {"plateau_threshold": 10.0}])
def test_other_metric_rules_get_no_paper_values(tmp_path, rule):
    comparison = comparison_of(tmp_path, AUTHORS_RULES | rule)
    assert len(comparison) and comparison.paper_mean.isna().all()


def test_the_sensitivity_values_need_the_interpolation_from_a_in_100_points():
    row = {"axis": "target", "base_kind": "real", "model": "gpt2", "sae": "gpt2-small-res-jb/blocks.1.hook_resid_pre",
           "layer": 1, "read_layer": 11, "metric": "max_slope_step", "target_kind": "gaussian",
           "scan_mode": "interpolate", "scan_start": "base", "steps": 99, "slope_threshold": 0.02}
    assert paper.reported(row)["paper_mean"] == 65.0
    for change in ({"scan_start": "target"}, {"steps": 100}, {"scan_mode": "step"}, {"model": "gpt2-medium"}):
        assert all(v != v for v in paper.reported(row | change).values()), change  # NaN
