"""The Python API: what `import synthact` offers, that it stays cheap, and the README's notebook example as written."""

import ast
import os
import re
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest
import yaml

import synthact
from synthact import api
from synthact.spec import parse_job
from tests.helpers import ROOT, toy_job

EXAMPLE_SECTION = "## From Python"


def test_every_name_in_all_is_documented_and_reachable():
    for name in synthact.__all__:
        value = getattr(synthact, name)
        assert name == "__version__" or value.__doc__, f"synthact.{name} has no docstring"
    assert set(synthact.__all__) <= set(dir(synthact))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        synthact.nope  # noqa: B018


def loaded_in_a_fresh_process(code: str, libraries: set[str]) -> list[str]:
    """Which of `libraries` a fresh Python process has imported after running `code`."""
    probe = f"{code}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(libraries)!r})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip())


def test_import_and_validate_load_no_heavy_library():
    code = "import synthact; synthact.grid_size(synthact.load_job('jobs/paper.yaml'))"
    assert loaded_in_a_fresh_process(code, {"torch", "ray", "transformer_lens", "wandb"}) == []


def test_a_ray_driver_loads_no_model_library(tmp_path):
    """The driver of a Ray sweep (often a CPU head node) plans, dispatches, writes and compares: no torch,
    TransformerLens or sae_lens in its process; the worker actors import them. Its resume checks of a new
    output directory (damaged statistics, then the plan) load none either."""
    code = ("import synthact.cli, synthact.run.ray_executor, synthact.analysis.compare, synthact.analysis.summary; "
            "from synthact.run.plan import Plan; from synthact.run.store import Store; "
            f"job = synthact.load_job('jobs/smoke.yaml'); store = Store({str(tmp_path / 'out')!r}, job); "
            "store.discard_damaged_stats(); Plan(job, store)")
    assert loaded_in_a_fresh_process(code, {"torch", "transformer_lens", "sae_lens"}) == []


def test_load_job_takes_a_path_a_dict_or_a_job():
    from_path = synthact.load_job(ROOT / "jobs" / "paper-toy.yaml")
    from_dict = synthact.load_job(yaml.safe_load((ROOT / "jobs" / "paper-toy.yaml").read_text()))
    assert from_dict.spec_hash == from_path.spec_hash
    assert synthact.load_job(from_path) is from_path
    assert synthact.load_job({k: v for k, v in toy_job().items() if k != "name"}).name == "job"


@pytest.mark.parametrize("bad, needle", [
    ({"layers": [9]}, "layer 9 is out of range"),
    ({"bases_per_cel": 3}, "unknown key 'bases_per_cel'"),
])
def test_a_bad_dict_raises_the_message_the_cli_prints(bad, needle):
    with pytest.raises(synthact.SpecError, match=needle):
        synthact.load_job(toy_job(**bad))


def test_a_job_of_another_type_is_a_spec_error():
    with pytest.raises(synthact.SynthactError, match="not int"):
        synthact.load_job(3)


def test_grid_and_its_size_agree():
    job = synthact.load_job(toy_job(read_layers=[2, -1]))
    cells = synthact.grid(job)
    size = synthact.grid_size(job)
    assert len(cells) == size["cells"] == 4 and {"base_kind", "direction"} <= set(cells.columns)
    assert size["curves"] == 4 * 10 * 2 and size["shards"] == 4 * 3


def test_run_reads_compares_reports_and_resumes(tmp_path):
    spec = toy_job(base_kinds=["real"], directions=["toward:real", "toward:gaussian"], scan={"steps": 10},
                   bases_per_cell=6, shard_size=3, reference={"n_prompts": 128}, device="cpu", wandb=False)
    out = tmp_path / "out"
    sweep = synthact.run_job(spec, out, progress=False)
    assert sweep.ok and sweep.out == str(out) and sweep.summary.shards_done == 4
    assert set(sweep.comparison.variant) == {"toward:gaussian"}
    assert sweep.verdicts.empty  # step scans only, no synthetic kind: no slope and no plateau verdict (aggregate.verdicts)
    rows = synthact.read_rows(out)
    assert isinstance(rows, pd.DataFrame) and len(rows) == 12 and "l2_curve" not in rows
    assert "l2_curve" in sweep.rows(curves=True)
    table = synthact.read_table(out, ["cell_id", "max_slope_step"])
    assert isinstance(table, pa.Table) and table.column_names == ["cell_id", "max_slope_step"]
    comparison, _ = synthact.compare(out, tmp_path / "c.csv")
    pd.testing.assert_frame_equal(comparison, sweep.comparison)
    assert (tmp_path / "c.csv").stat().st_size > 0
    differences = synthact.differences(out, tmp_path / "d.csv")  # no rung here: gaussian has no R1 to differ from
    pd.testing.assert_frame_equal(differences, sweep.differences)
    assert differences.empty and "ks_diff_p_holm" in pd.read_csv(tmp_path / "d.csv").columns
    assert synthact.report(out).html.is_file()
    assert synthact.verify(out).ok
    again = synthact.run_job(spec, out, progress=False)  # resume: nothing left to run
    assert again.summary.shards_done == 0 and again.summary.shards_skipped == 4
    with pytest.raises(synthact.SynthactError, match="another job spec"):
        synthact.run_job(dict(spec, seed=5), out, progress=False)


def test_verify_refuses_a_directory_that_is_no_sweep(tmp_path):
    with pytest.raises(synthact.SynthactError, match="not a synthact output directory"):
        synthact.verify(tmp_path)


def test_output_defaults_to_the_jobs_output_then_runs_name():
    job = synthact.load_job(toy_job(name="n"))
    assert api.output_of(job) == "runs/n" and api.output_of(job, "x") == "x"
    assert api.output_of(synthact.load_job(toy_job(output="o/p"))) == "o/p"


def readme_example() -> str:
    """The first python code block of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(EXAMPLE_SECTION):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The README's code, unchanged, from a directory whose jobs/paper-toy.yaml is the toy twin with fewer bases."""
    job = yaml.safe_load((ROOT / "jobs" / "paper-toy.yaml").read_text())
    job.update(bases_per_cell=12, shard_size=12, reference={"n_prompts": 256})
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "paper-toy.yaml").write_text(yaml.safe_dump(job))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    assert len(namespace["rows"]) == len(parse_job(job).cells()) * 12
    assert len(namespace["slope"]) == 6  # each target kind against toward:real
    assert (tmp_path / "runs" / "paper-toy" / "ks.png").stat().st_size > 1000
