"""The end-of-run summary fits one screen whatever the grid, and leads with the study's answers."""

from __future__ import annotations

from synthact.analysis import answers, compare, summary
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
    assert len(lines) <= 40 and max(map(len, lines)) <= 120, text
    assert lines[0] == answers.TITLE and "more answers: synthact compare OUT" in text
    assert f"synthact compare {tmp_path}" in text and summary.TOY_NOTE not in text
    # what it shows is the answers table's head, as compare prints it
    printed = compare.comparison_text(comparison, verdicts).splitlines()
    head = lines[:next(i for i, line in enumerate(lines) if "more answers" in line)]
    assert head == printed[:len(head)] and any(answers.QUESTIONS[CHECK_STRUCTURE][0] in line for line in head)


def test_summary_without_results_has_the_totals_only():
    run = RunSummary(cells=2, shards=2, shards_skipped=0, failures=[("a-00000", "boom")], wall_s=1.0)
    text = summary.render(run, "OUT")
    assert text.splitlines()[0].startswith("2 cells, 2 shards") and "FAILED a-00000: boom" in text
    assert "fix the cause first where it is not transient" in " ".join(text.split())  # a retry alone repeats it
