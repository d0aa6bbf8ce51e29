"""`synthact run` -> Parquet + offline W&B run whose tables equal the Parquet aggregates -> compare -> report."""

import numpy as np
import pytest

from synthact import results
from synthact.analysis import aggregate, answers, stats, summary
from synthact.analysis.cells import Sweep
from synthact.analysis.wandb_files import read_offline_run
from tests.helpers import synthact, write_job


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    job = write_job(
        tmp / "job.yaml",
        base_kinds=["real", "gaussian", "synthetic_baseline", "synthetic_structured"],
        directions=["toward:same", "isotropic"],
        read_layers=[-1],
        bases_per_cell=12,
        shard_size=6,
        wandb={"project": "synthact-e2e"},
    )
    out = tmp / "out"
    result = synthact("run", str(job), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_run_prints_summary_and_checks(sweep):
    out, stdout = sweep
    assert answers.TITLE in stdout and answers.QUESTIONS[aggregate.CHECK_PLATEAU][0] in stdout
    shown = stdout.splitlines()
    shown = shown[:next(i for i, line in enumerate(shown) if line.startswith("Results: ")) + 1]  # then W&B's lines
    assert summary.TOY_NOTE in stdout and max(map(len, shown)) <= 120
    assert f"synthact compare {out}" in stdout and len(stdout.splitlines()) <= 40
    assert "8 cells, 16 shards (16 run now, 0 already done, 0 failed), 96 curves" in stdout


def test_offline_wandb_tables_equal_parquet_aggregates(sweep):
    out, _ = sweep
    (run_dir,) = sorted((out / "wandb").glob("offline-run-*"))
    run = read_offline_run(run_dir)
    rows = results.read_table(out).to_pandas()
    logged = run["tables"]["cells"]
    assert len(logged) == rows.groupby(["cell_id", "read_layer"]).ngroups == 8
    for _, got in logged.iterrows():
        mine = rows[(rows.cell_id == got.cell_id) & (rows.read_layer == got.read_layer)]
        assert got["curves"] == len(mine) == 12
        for metric in results.AGGREGATED:
            x = stats.finite(mine[metric])
            assert got[f"{metric}_mean"] == pytest.approx(x.mean(), rel=1e-9)
            assert got[f"{metric}_median"] == pytest.approx(np.median(x), rel=1e-9)
    assert run["summary"]["sweep/curves"] == 96
    comparison = run["tables"]["comparison"]
    np.testing.assert_allclose(comparison.ks_stat.astype(float), aggregate.compare_kinds(Sweep.open(out)).ks_stat, rtol=1e-9)


def test_compare_and_report_commands(sweep, tmp_path):
    out, _ = sweep
    compare = synthact("compare", str(out), "--csv", str(tmp_path / "c.csv"))
    assert compare.returncode == 0, compare.stderr
    # step scans only: the plateau verdict, and no slope verdict (they read the sensitivity experiment's scans)
    question = {check: answers.QUESTIONS[check][0] for check in (aggregate.CHECK_PLATEAU, aggregate.CHECK_STRUCTURE)}
    assert question[aggregate.CHECK_PLATEAU] in compare.stdout
    assert question[aggregate.CHECK_STRUCTURE] not in compare.stdout
    assert (tmp_path / "c.csv").stat().st_size > 0
    report = synthact("report", str(out), "--html", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert html.count("<img") >= 3 and "data:image/png;base64," in html
