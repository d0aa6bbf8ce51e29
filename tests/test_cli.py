"""The command line: help, validate, and bad input as one readable message with exit code 2.

Commands run through `synthact.cli.main` in this process (tests.helpers.synthact); one test runs a real
process, to see the exit code and stderr a shell sees."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from synthact import api
from tests.helpers import QUICK_SAE, saved_toy_sae, synthact, synthact_process, write_job

ROOT = Path(__file__).resolve().parents[1]


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["run", "validate", "verify", "compare", "report", "bench", "bench-ray"])
def test_every_command_has_help(command):
    result = synthact(command, "--help")
    assert result.returncode == 0 and "usage: synthact" in result.stdout


def test_validate_prints_the_grid():
    result = synthact("validate", "jobs/paper.yaml")
    assert result.returncode == 0, result.stderr
    # the paper's grid: 7 target kinds x 3 scans (100, 101 and 101 points)
    assert "21 cells x 1000 bases = 21000 curves" in result.stdout
    assert "2,114,000 scan points" in result.stdout
    assert "sensitivity" in result.stdout and "plateaus" in result.stdout and "plateaus-around-A" in result.stdout


@pytest.mark.parametrize("job, axes", [("paper-toy", ["direction", "target_kind", "scan"]),
                                       ("smoke", ["layer", "base_kind", "direction", "target_kind"])])
def test_validate_shows_only_the_axes_that_vary(job, axes):
    """Not a 26-column table mostly of NaN and None: the axes that vary as columns, the rest in one or two lines."""
    lines = synthact("validate", f"jobs/{job}.yaml").stdout.splitlines()
    header = lines.index("the axes that vary, one row per cell:") + 1
    assert lines[header].split() == axes and "NaN" not in "\n".join(lines) and "None" not in "\n".join(lines)
    assert any(line.startswith("every cell: model toy-") for line in lines)
    assert any(line.startswith("where they apply: template base, match nearest_k, nearest_k 10,") for line in lines)
    assert any("detects a KS distance" in line for line in lines) and max(map(len, lines)) <= 120


def test_validate_and_run_take_overrides(tmp_path):
    """KEY=VALUE words after the job: validated like the file, recorded in job.json; a resume needs the same spec."""
    job, out = write_job(tmp_path / "j.yaml"), tmp_path / "out"
    shown = synthact("validate", str(job), "bases_per_cell=3", "scan.steps=6")
    assert shown.returncode == 0 and "1 cells x 3 bases" in shown.stdout, shown.stderr
    assert_clean_error(synthact("validate", str(job), "bases_per_cel=3"), "did you mean 'bases_per_cell'?")
    first = synthact("run", str(job), "seed=4", "bases_per_cell=3", "--out", str(out), "--no-progress")
    assert first.returncode == 0, first.stderr
    claim = json.loads((out / "job.json").read_text())
    assert claim["overrides"] == ["seed=4", "bases_per_cell=3"] and claim["spec"]["seed"] == 4
    again = synthact("run", str(job), "--out", str(out), "seed=4", "--no-progress", "bases_per_cell=3")
    assert again.returncode == 0 and "(0 run now, 2 already done, 0 failed)" in again.stdout, again.stderr
    for other in (["seed=5", "bases_per_cell=3"], []):
        refused = synthact("run", str(job), *other, "--out", str(out), "--no-progress")
        assert_clean_error(refused, "already holds results of another job spec")


def test_results_warnings_are_one_line_each_once(tmp_path):
    """A file under results/ that no record names: compare says so once, in one line, not as a raw Python warning."""
    job, out = write_job(tmp_path / "j.yaml"), tmp_path / "out"
    assert synthact("run", str(job), "--out", str(out), "--no-progress").returncode == 0
    shard = next((out / "results").rglob("*.parquet"))
    (shard.parent / "copied.parquet").write_bytes(shard.read_bytes())
    result = synthact("compare", str(out))
    told = [line for line in result.stderr.splitlines() if line]
    assert result.returncode == 0 and len(told) == 1 and told[0].startswith("synthact: ") and "copied.parquet" in told[0]
    assert "Warning" not in result.stderr and "warnings.warn" not in result.stderr


def test_synthact_warnings_print_as_one_line_each_text_once(capsys):
    """However many places raise the same synthact warning, the command line shows it once, as one line."""
    import warnings

    from synthact.analysis.tracking import TrackingWarning
    from synthact.cli import one_line_warnings

    with one_line_warnings():
        for _ in range(3):
            warnings.warn("W&B could not log (timeout)", TrackingWarning, stacklevel=1)
        warnings.warn("W&B could not log (timeout)", TrackingWarning, stacklevel=1)  # another place
        warnings.warn("W&B could not close the run", TrackingWarning, stacklevel=1)
    assert capsys.readouterr().err.splitlines() == ["synthact: warning: W&B could not log (timeout)",
                                                    "synthact: warning: W&B could not close the run"]


@pytest.mark.parametrize("command, interrupted, truth", [
    ("compare", "analyse", "the results are untouched; the per-cell and per-panel summaries already computed are kept"),
    ("report", "report", "the figures written so far are in OUT/report"),
    ("verify", "verify", "nothing was changed (verify only reads)"),
])
def test_ctrl_c_says_what_is_true_for_each_command(tmp_path, monkeypatch, command, interrupted, truth):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt  # what Python raises in the main thread on SIGINT

    (tmp_path / "job.json").write_text("{}")
    monkeypatch.setattr(api, interrupted, ctrl_c)
    result = synthact(command, str(tmp_path))
    assert result.returncode == 130 and result.stderr.startswith("synthact: interrupted; "), result.stderr
    assert truth in result.stderr and result.stderr.count("\n") == 1 and "resume" not in result.stderr


def test_unknown_key(tmp_path):
    result = synthact("validate", str(write_job(tmp_path / "j.yaml", bases_per_cel=3)))
    assert_clean_error(result, "unknown key 'bases_per_cel': did you mean 'bases_per_cell'?")


def test_version_is_the_package_version():
    result = synthact("--version")
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # [project]
    assert result.returncode == 0 and result.stdout.strip() == f"synthact {version}"


@pytest.mark.parametrize("args, option", [
    (["compare", "OUT", "--csv", ""], "--csv"), (["compare", "OUT", "--ray", ""], "--ray"),
    (["report", "OUT", "--html", " "], "--html"), (["run", "--ray", "", "--out", "x"], "--ray"),
    (["run", "--out", ""], "--out"), (["verify", ""], "out"),
])
def test_an_empty_option_value_is_refused_not_ignored(tmp_path, args, option):
    result = synthact(*[str(tmp_path) if a == "OUT" else a for a in args])
    assert_clean_error(result, f"argument {option}: is empty; give a value, or leave the option out")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "analysis").exists()


def test_the_api_refuses_empty_values_too(tmp_path):
    for call in (lambda: api.run_job("jobs/smoke.yaml", tmp_path, ray=""), lambda: api.compare(tmp_path, csv=""),
                 lambda: api.report(tmp_path, html=""), lambda: api.analyse(tmp_path, ray="")):
        with pytest.raises(api.SynthactError, match="is empty"):
            call()


@pytest.mark.parametrize("args, needle", [
    (["compar", "x"], "invalid choice: 'compar'"), (["run", "--no-wandbb"], "unrecognized arguments: --no-wandbb"),
    (["verify", "x", "--recompte"], "unrecognized arguments: --recompte"),
])
def test_a_misspelt_command_or_option_gets_a_suggestion(args, needle):
    near = {"compar": "compare", "--no-wandbb": "--no-wandb", "--recompte": "--recompute"}[args[0] if
                                                                                          args[0] == "compar" else args[-1]]
    assert_clean_error(synthact(*args), needle, f"did you mean {near}?")


def test_empty_grid(tmp_path):
    assert_clean_error(synthact("validate", str(write_job(tmp_path / "j.yaml", layers=[]))), "grid is empty")


def test_missing_job_file(tmp_path):
    assert_clean_error(synthact("run", str(tmp_path / "missing.yaml")), "does not exist")


def test_a_process_given_bad_input_exits_2_with_one_paragraph(tmp_path):
    result = synthact_process("validate", str(write_job(tmp_path / "j.yaml", layers=[7])))
    assert_clean_error(result, "layer 7 is out of range for model")
    assert result.stderr.startswith("synthact: error:") and result.stdout == ""


def test_read_layer_before_perturbation_layer(tmp_path):
    job = write_job(tmp_path / "j.yaml", layers=[2], read_layers=[1])
    assert_clean_error(synthact("validate", str(job)), "comes before perturbation layer 2")


def test_used_output_directory_is_refused(tmp_path):
    out = tmp_path / "out"
    first = synthact("run", str(write_job(tmp_path / "a.yaml")), "--out", str(out), "--no-progress")
    assert first.returncode == 0, first.stderr
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = synthact("run", str(write_job(tmp_path / "b.yaml", seed=5)), "--out", str(out), "--no-progress")
    assert_clean_error(other, "already holds results of another job spec")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files  # nothing touched


def test_missing_local_model_directory(tmp_path):
    job = write_job(tmp_path / "j.yaml", model={"local": str(tmp_path / "no-such-checkpoint")})
    assert_clean_error(synthact("run", str(job), "--out", str(tmp_path / "o"), "--no-progress"), "no-such-checkpoint")


def test_sae_for_another_hook(tmp_path):
    job = write_job(tmp_path / "j.yaml", sae={"local": saved_toy_sae(2, QUICK_SAE)})
    result = synthact("run", str(job), "--out", str(tmp_path / "o"), "--no-progress")
    assert_clean_error(result, "blocks.2.hook_resid_pre", "blocks.1.hook_resid_pre")


def test_sae_for_another_d_model(tmp_path):
    job = write_job(tmp_path / "j.yaml", sae={"local": saved_toy_sae(1, QUICK_SAE, d_model=32, d_mlp=128, train_steps=0)})
    result = synthact("run", str(job), "--out", str(tmp_path / "o"), "--no-progress")
    assert_clean_error(result, "32", "64")


def test_unreachable_ray_address_fails_fast(tmp_path):
    job = write_job(tmp_path / "j.yaml")
    result = synthact("run", str(job), "--out", str(tmp_path / "o"), "--ray", "127.0.0.1:1", "--no-progress")
    assert_clean_error(result, "no Ray cluster answers at '127.0.0.1:1'", "--ray local")


def test_overrides_go_anywhere_after_the_command_and_alone_change_the_default_job():
    from synthact import cli

    def parsed(*argv):
        parser = cli.build_parser(list(argv))
        args = cli.parse(parser, list(argv))
        return args.job, args.overrides

    assert parsed("run", "seed=3", "--no-wandb") == (str(cli.SMOKE_JOB), ["seed=3"])
    assert parsed("run", "jobs/paper-toy.yaml", "--out", "o", "seed=3", "--no-progress", "js=true") == (
        "jobs/paper-toy.yaml", ["seed=3", "js=true"])
    assert parsed("validate", "jobs/paper-toy.yaml", "scan.0.steps=9") == ("jobs/paper-toy.yaml", ["scan.0.steps=9"])


def test_validate_folds_an_axis_that_renames_another_when_the_table_is_too_wide():
    """gemma-scope-toy's grid is 133 characters wide with target_kind beside direction (toward:X targets X)."""
    lines = synthact("validate", "jobs/gemma-scope-toy.yaml").stdout.splitlines()
    header = lines[lines.index("the axes that vary, one row per cell:") + 1].split()
    assert "direction" in header and "target_kind" not in header and max(map(len, lines)) <= 120
    assert "  (target_kind: one value for each value of direction, not shown)" in lines
