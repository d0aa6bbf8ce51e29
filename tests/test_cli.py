"""The command line: help, validate, and bad input as one readable message with exit code 2.

Commands run through `synthact.cli.main` in this process (tests.helpers.synthact); one test runs a real
process, to see the exit code and stderr a shell sees."""

import subprocess
from pathlib import Path

import pytest

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


def test_unknown_key(tmp_path):
    result = synthact("validate", str(write_job(tmp_path / "j.yaml", bases_per_cel=3)))
    assert_clean_error(result, "unknown key 'bases_per_cel'")


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
