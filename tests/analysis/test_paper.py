"""The paper's reported values are printed only beside rows of the authors' scan framing and metric rules: unmarked
where model, SAE and layers are theirs too (paper_match "setting"), marked * where only the framing is
(paper_match "framing", the toy twin) (analysis/paper.py)."""

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


GPT2 = {"model": {"pretrained": "gpt2"}, "sae": {"release": "gpt2-small-res-jb"}, "corpus": {"file": "tokens.npy"}}
TOY = {"model": {"toy": {"n_layers": 4}}, "sae": {"toy": {}}, "corpus": {"toy": {}}}


def plateau_job(metrics: dict, inputs: dict = GPT2):
    """The paper's model, SAE and layer (parsed only: nothing is loaded) or the toy twin's, real bases, two
    plateau framings."""
    return make_job(bases=20, **inputs, base_kinds=["real"],
                    directions=["toward:real", "toward:gaussian", "toward:synthetic_baseline"],
                    scan=PLATEAU_SCANS, metrics=metrics, read_layers=[-1])


def comparison_of(tmp_path, metrics: dict, inputs: dict = GPT2):
    write_results(plateau_job(metrics, inputs), tmp_path, read_layers=(11 if inputs is GPT2 else 3,))  # last block
    comparison = aggregate.compare_kinds(Sweep.open(tmp_path), metrics=("plateau_len",))
    return comparison[comparison.axis == "target"]


def printed_paper_values(comparison, out) -> tuple[list[str], str]:
    """The printed lines with the plateau values of the paper, and the whole text compare prints."""
    text = compare.comparison_text(comparison, aggregate.verdicts(comparison, aggregate.differences(Sweep.open(out))))
    lines, heading, printed = text.splitlines(), "", []
    for line in lines:
        heading = line if line.startswith("[") else heading
        if "15.1+-8.6" in line:  # the authors' real plateau beside a kind's
            printed.append(f"{heading} {line}")
    return printed, " ".join(text.split())  # the notes are wrapped to 120 characters


def test_paper_values_are_printed_for_the_authors_framing_only(tmp_path):
    comparison = comparison_of(tmp_path, AUTHORS_RULES)
    theirs = comparison[comparison.scan == "plateaus"].set_index("target_kind")
    assert theirs.loc["gaussian", "paper_mean"] == 8.33 and theirs.loc["gaussian", "paper_ks"] == 0.568
    assert theirs.loc["synthetic_baseline", "paper_ks"] == 0.754 and theirs.loc["gaussian", "paper_mean_real"] == 15.12
    assert (theirs.paper_match == "setting").all()
    assert comparison[comparison.scan == "plateaus-around-A"].paper_mean.isna().all()
    assert (comparison[comparison.scan == "plateaus-around-A"].paper_match == "").all()
    printed, text = printed_paper_values(comparison, tmp_path)
    assert len(printed) == 2 and all("| plateaus | base real " in line for line in printed)
    assert not any("*" in line for line in printed) and paper.FRAMING_NOTE not in text  # unmarked
    assert "plateau around T (scan from T to A)" in text and "plateau around A (scan from A to T)" in text


def test_the_toy_twin_gets_the_paper_values_marked_as_framing_only(tmp_path):
    comparison = comparison_of(tmp_path, AUTHORS_RULES, TOY)
    theirs = comparison[comparison.scan == "plateaus"].set_index("target_kind")
    assert (theirs.paper_match == "framing").all() and theirs.loc["gaussian", "paper_ks"] == 0.568
    around_a = comparison[comparison.scan == "plateaus-around-A"]
    assert around_a.paper_mean.isna().all() and (around_a.paper_match == "").all()
    printed, text = printed_paper_values(comparison, tmp_path)
    assert len(printed) == 2 and all("| plateaus | base real " in line and "*" in line for line in printed)
    assert text.count(paper.FRAMING_NOTE) == 1
    assert not any("plateaus-around-A" in line for line in printed)


@pytest.mark.parametrize("rule", [{"cut": "through_target"}, {"fallback": "last"}, {"plateau_threshold": 10.0}])
@pytest.mark.parametrize("inputs", [GPT2, TOY], ids=["gpt2", "toy"])
def test_other_metric_rules_get_no_paper_values(tmp_path, rule, inputs):
    comparison = comparison_of(tmp_path, AUTHORS_RULES | rule, inputs)
    assert len(comparison) and comparison.paper_mean.isna().all() and (comparison.paper_match == "").all()
    assert paper.FRAMING_NOTE not in printed_paper_values(comparison, tmp_path)[1]


def test_the_sensitivity_values_need_the_interpolation_from_a_in_100_points():
    row = {"axis": "target", "base_kind": "real", "model": "gpt2", "sae": "gpt2-small-res-jb/blocks.1.hook_resid_pre",
           "layer": 1, "read_layer": 11, "metric": "max_slope_step", "target_kind": "gaussian",
           "scan_mode": "interpolate", "scan_start": "base", "steps": 99, "slope_threshold": 0.02}
    assert paper.reported(row)["paper_mean"] == 65.0 and paper.reported(row)["paper_match"] == "setting"
    assert paper.reported(row | {"model": "gpt2-medium"})["paper_match"] == "framing"
    for change in ({"scan_start": "target"}, {"steps": 100}, {"scan_mode": "step"}, {"base_kind": "gaussian"},
                   {"axis": "base"}):
        numbers = paper.reported(row | change)
        assert numbers.pop("paper_match") == "" and all(v != v for v in numbers.values()), change  # NaN
