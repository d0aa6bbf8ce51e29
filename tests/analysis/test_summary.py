"""The end-of-run summary fits one screen whatever the grid, and leads with the paper's design."""

from __future__ import annotations

from synthact.analysis import compare, summary
from synthact.analysis.aggregate import CHECK_STRUCTURE
from synthact.run.plan import RunSummary
from tests.helpers import PAPER_SCANS, make_job, write_results

KINDS = ["real", "sae_recon", "gaussian", "synthetic_baseline", "synthetic_structured"]


def test_summary_of_a_large_grid_fits_one_screen(tmp_path):
    job = make_job(bases=6, layers=[1, 2], base_kinds=KINDS, scan=PAPER_SCANS[:1],  # the structure verdict reads interpolation
                   directions=["toward:same", "toward:real", "toward:gaussian", "toward:sae_recon",
                               "toward:synthetic_baseline", "toward:synthetic_structured"])
    write_results(job, tmp_path)
    comparison, verdicts = compare.compare(tmp_path)
    assert len(comparison) > 200  # far more comparisons than a screen holds
    run = RunSummary(cells=len(job.cells()), shards=len(job.shards()), shards_skipped=0, curves=1, wall_s=1.0)
    text = summary.render(run, str(tmp_path), comparison, verdicts)
    lines = text.splitlines()
    assert len(lines) <= 40, text
    assert lines[0].startswith("The paper's design") and "base real]" in lines[1]
    assert any(CHECK_STRUCTURE in line for line in lines)
    assert f"synthact compare {tmp_path}" in text
    # The paper-design rows name each target kind once per experiment, with its KS against toward:real.
    first = comparison[(comparison.axis == "target") & (comparison.base_kind == "real")
                       & (comparison.metric == "max_slope_step")]
    panel = first[first.read_layer == first.read_layer.min()]
    for r in panel.itertuples():
        assert any(r.variant in line and f"{r.ks_stat:.2f}" in line for line in lines), r.variant


def test_summary_without_results_has_the_totals_only():
    run = RunSummary(cells=2, shards=2, shards_skipped=0, failures=[("a-00000", "boom")], wall_s=1.0)
    text = summary.render(run, "OUT")
    assert text.splitlines()[0].startswith("2 cells, 2 shards") and "FAILED a-00000: boom" in text
