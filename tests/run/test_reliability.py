"""Hostile input and damaged output directories: each gets one clear message, nothing is lost or mixed.

Runs go through `synthact.cli.main` in this process (a traceback would fail the test) on the toy
model, with real Parquet files, a real local Ray instance and real tmpfs mounts (tests run as root).
"""

import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from synthact.cli import main
from synthact.errors import SynthactError
from synthact.inputs.backends import load_model
from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.store import Store, resolve_location
from synthact.spec import ModelSpec, SpecError, load_job, parse_job
from tests.helpers import rows, saved_toy_sae, toy_job, write_job

ROOT = Path(__file__).resolve().parents[2]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def clean_error(capsys, *args: str) -> str:
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("synthact: error:"), err
    return err


def sorted_rows(out: Path) -> pa.Table:
    table = read_table(out)
    return table.select([c for c in table.column_names if c != "cell"]).sort_by([("shard_id", "ascending"),
                                                                                 ("base_index", "ascending")])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished four-shard toy sweep: (job file, output directory, its rows)."""
    tmp = tmp_path_factory.mktemp("finished")
    job = write_job(tmp / "job.yaml", bases_per_cell=4, shard_size=1)
    out = tmp / "out"
    assert main(["run", str(job), "--out", str(out), "--no-progress"]) == 0
    return job, out, sorted_rows(out)


def copy_of(finished, tmp_path) -> tuple[Path, Path]:
    job, out, _ = finished
    subprocess.run(["cp", "-a", str(out), str(tmp_path / "out")], check=True)
    return job, tmp_path / "out"


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("results/cell=*/*.parquet"))


# ---------------------------------------------------------------------- damaged results are redone


def test_deleted_shard_file_is_regenerated(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    shard_files(out)[1].unlink()
    code, _, err = cli(capsys, "run", str(job), "--out", str(out), "--no-progress")
    assert code == 0 and "failed verification and were redone" in err and "is missing" in err, err
    assert sorted_rows(out).equals(finished[2])


def test_shard_damaged_in_the_middle_with_its_footer_intact_is_redone_by_a_rerun(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    bad = shard_files(out)[1]
    data = bytearray(bad.read_bytes())
    assert len(data) > 2000  # the footer lies beyond the damage
    data[200:1200] = b"\x00" * 1000
    bad.write_bytes(bytes(data))
    code, text, _ = cli(capsys, "verify", str(out))
    assert code == 1 and bad.stem in text and "checksum" in text, text
    code, _, err = cli(capsys, "run", str(job), "--out", str(out), "--no-progress")
    assert code == 0 and "failed verification and were redone" in err and "checksum" in err, err
    assert sorted_rows(out).equals(finished[2])
    assert cli(capsys, "verify", str(out), "--deep")[0] == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_reference_statistics_are_named_by_verify_deep_and_repaired_by_a_rerun(finished, tmp_path, capsys,
                                                                                         damage):
    job, out = copy_of(finished, tmp_path)
    [stats] = (out / "stats").iterdir()
    if damage == "truncate":
        tensors = stats / "tensors.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:5000])
    else:
        (stats / "stats.json").write_text("{garbage")
    assert cli(capsys, "verify", str(out))[0] == 0  # only --deep reads statistics
    code, text, _ = cli(capsys, "verify", str(out), "--deep")
    assert code == 1 and "damaged reference statistics" in text and stats.name in text, text
    code, _, err = cli(capsys, "run", str(job), "--out", str(out), "--no-progress")
    assert code == 0 and "recomputed" in err, err
    assert cli(capsys, "verify", str(out), "--deep")[0] == 0
    shard_files(out)[0].unlink()  # a shard to redo: its worker recomputes the statistics
    code, _, err = cli(capsys, "run", str(job), "--out", str(out), "--no-progress")
    assert code == 0 and sorted_rows(out).equals(finished[2]) and (out / "stats" / stats.name).is_dir(), err


def test_running_shards_temporary_is_not_a_stray(finished, tmp_path, capsys):
    _, out = copy_of(finished, tmp_path)
    running = shard_files(out)[0].parent / ".tmp-1234abcd-next.parquet"
    running.write_bytes(b"half a shard")
    code, text, _ = cli(capsys, "verify", str(out))
    assert code == 0 and "0 stray" in text, text


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_shard_is_named_by_verify_and_redone_by_a_rerun(finished, tmp_path, capsys, damage):
    job, out = copy_of(finished, tmp_path)
    bad = shard_files(out)[2]
    bad.write_bytes(bad.read_bytes()[:100] if damage == "truncate" else b"not parquet at all")
    (out / "results" / "notes.txt").write_text("a stray file")
    code, text, _ = cli(capsys, "verify", str(out))
    assert code == 1 and bad.stem in text and "bytes, its manifest record says" in text and "notes.txt" in text, text
    code, _, err = cli(capsys, "run", str(job), "--out", str(out), "--no-progress")
    assert code == 0, err
    assert sorted_rows(out).equals(finished[2])
    code, text, _ = cli(capsys, "verify", str(out), "--deep")
    assert code == 1 and "0 bad, 1 stray" in text  # only the user's own file is left


def test_records_without_a_checksum_are_checked_by_rows(finished, tmp_path):
    """Records written before synthact recorded size and sha256: intact files pass, wrong row counts do not."""
    _, out = copy_of(finished, tmp_path)
    for record in (out / "manifest").glob("*.json"):
        data = json.loads(record.read_text())
        record.write_text(json.dumps({k: v for k, v in data.items() if k not in ("size", "sha256")}))
    store = Store(out, load_job(finished[0]))
    assert len(store.verify(deep=True).good) == 4
    target = shard_files(out)[0]
    pa.parquet.write_table(pa.parquet.read_table(target).slice(0, 0), target)
    assert [problem for _, problem in store.verify().bad] == [f"{target} holds 0 rows, its manifest record says 1"]


# ---------------------------------------------------------------------- the directory's claim


def test_two_specs_started_together_do_not_mix(tmp_path):
    a, b = parse_job(toy_job()), parse_job(toy_job(seed=7))
    store_a, store_b = Store(tmp_path / "out", a), Store(tmp_path / "out", b)  # both saw an unclaimed directory
    store_a.write_shard(a.shards()[0], rows(a.shards()[0]))
    with pytest.raises(SynthactError, match="already holds results of another job spec"):
        store_b.write_shard(b.shards()[0], rows(b.shards()[0]))
    assert set(read_table(tmp_path / "out")["shard_id"].to_pylist()) == {a.shards()[0].shard_id}


def test_changing_only_description_output_wandb_or_ray_settings_resumes(finished, tmp_path, capsys):
    job, out = copy_of(finished, tmp_path)
    changed = write_job(tmp_path / "changed.yaml", bases_per_cell=4, shard_size=1, description="another description",
                        output=str(tmp_path / "elsewhere"), ray={"max_retries": 7, "num_gpus": 0},
                        wandb={"enabled": False, "project": "other"})
    code, _, err = cli(capsys, "run", str(changed), "--out", str(out), "--no-progress")
    assert code == 0 and "already holds" not in err, err
    assert sorted_rows(out).equals(finished[2])
    reseeded = write_job(tmp_path / "reseeded.yaml", bases_per_cell=4, shard_size=1, seed=1)
    assert "already holds results of another job spec" in clean_error(capsys, "run", str(reseeded), "--out", str(out))


def test_changed_corpus_file_refuses_resume(tmp_path):
    corpus = tmp_path / "tokens.npy"
    np.save(corpus, np.arange(64 * 16).reshape(64, 16) % 500)
    job = parse_job(toy_job(corpus={"file": str(corpus)}))
    Store(tmp_path / "out", job).write_shard(job.shards()[0], rows(job.shards()[0]))
    stat = corpus.stat()
    np.save(corpus, (np.arange(64 * 16).reshape(64, 16) + 1) % 500)  # same size; mtime restored below
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(SynthactError, match="other contents of .*tokens.npy"):
        Store(tmp_path / "out", job)


def test_a_spec_that_fails_to_load_leaves_the_directory_free(tmp_path, capsys):
    out = tmp_path / "out"
    broken = write_job(tmp_path / "a.yaml", model={"local": str(tmp_path / "no-such-checkpoint")})
    assert "no-such-checkpoint" in clean_error(capsys, "run", str(broken), "--out", str(out), "--no-progress")
    assert not (out / "job.json").exists()
    code, _, err = cli(capsys, "run", str(write_job(tmp_path / "b.yaml")), "--out", str(out), "--no-progress")
    assert code == 0, err


# ---------------------------------------------------------------------- validate refuses


@pytest.mark.parametrize("fields, needle", [
    ({"generation": {"tol": [0.1, 0.1]}}, "generation.tol: lists a value twice"),
    ({"read_layers": [-1, 3]}, "name the same block twice"),
    ({"bases_per_cell": 10**12}, "bases_per_cell"),
    ({"generation": {"structure": ["pairwise"], "tol": [0.1 * i for i in range(1, 40)], "candidates": list(range(1, 40))},
      "base_kinds": ["synthetic_structured"], "bases_per_cell": 1_000_000, "shard_size": 1}, "1,521,000,000 shards"),
    ({"device": "tpu:7"}, "device"),
    ({"sae": {"local": "/x/{foo}"}}, "only the placeholder {layer}"),
    ({"n_ctx": 100}, "longer than toy model n_ctx 64"),
    ({"reference": {"n_prompts": 10**9}}, "reference.n_prompts"),
    ({"directions": ["latent:999999"]}, "latent:999999 does not exist"),
    ({"directions": ["latent:²"]}, "unknown direction"),
    ({"seed": 10**30}, "seed"),
    ({"scan": {"step_size": float("inf")}}, "scan[0].step_size"),
    ({"scan": {"step_size": 1e300}}, "scan[0].step_size"),
    ({"scan": {"step_size": 1e-300}}, "scan[0].step_size"),
    ({"scan": {"steps": 10**9}}, "scan[0].steps"),
    ({"name": "../../etc/x"}, "name"),
    ({"generation": {"anchor_cos": [float("nan")]}}, "generation.anchor_cos[0]: Input should be a finite number"),
    ({"generation": {"anchor_cos": [5.0]}}, "generation.anchor_cos[0]: Input should be less than or equal to 1"),
    ({"generation": {"anchor_cos": [-7.0]}}, "generation.anchor_cos[0]: Input should be greater than or equal to -1"),
    ({"generation": {"tol": [-1.0]}}, "generation.tol[0]: Input should be greater than 0"),
    ({"generation": {"tol": [float("nan")]}}, "generation.tol[0]: Input should be a finite number"),
    ({"generation": {"tol": [float("inf")]}}, "generation.tol[0]: Input should be a finite number"),
    ({"metrics": {"plateau_mode": "relative"}}, "plateau_threshold as a fraction of d_last, so it must be in (0, 1]"),
    ({"metrics": {"slope_threshold": float("nan")}}, "metrics.slope_threshold: Input should be a finite number"),
    ({"ray": {"num_gpus": float("inf")}}, "ray.num_gpus: Input should be a finite number"),
    ({"model": {"toy": {"n_layers": 10**6}}}, "model[0].toy.n_layers"),
    ({"base_kinds": ["synthetic_baseline", "synthetic_structured"], "directions": ["toward:synthetic_structured"],
      "generation": {"nearest_k": list(range(1, 1001)), "anchor_pool": list(range(1, 1001))}}, "shards"),
])
@pytest.mark.timeout(600)  # catches a hang only (a grid listed instead of counted: test_grid_is_counted_...)
def test_validate_refuses(tmp_path, capsys, fields, needle):
    assert needle in clean_error(capsys, "validate", str(write_job(tmp_path / "j.yaml", **fields)))


def test_grid_is_counted_without_listing_it():
    job = parse_job(toy_job(generation={"tol": [0.1, 0.2], "candidates": [1, 4, 16]}, layers=[1, 2]))
    assert job.count() == (len(job.cells()), len(job.shards()))


def test_yaml_alias_bomb_is_refused(tmp_path, capsys):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]" for p, c in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert "more than 100,000 values (YAML aliases?)" in clean_error(capsys, "validate", str(tmp_path / "bomb.yaml"))


# ---------------------------------------------------------------------- run checks what it loads


def gpt2_checkpoint(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=512, n_positions=64)).save_pretrained(path)
    return path


def llama_checkpoint(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=64)).save_pretrained(path)
    return path


def local_sae(path: Path, d_sae: int = 128, change=None) -> str:
    """A sae_lens SAE for blocks.1.hook_resid_pre of a 64-wide model, saved with save_model; `change(sae)` edits it."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=d_sae, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre")))
        if change:
            with torch.no_grad():
                change(sae)
        sae.save_model(path)
    return str(path)


@pytest.mark.parametrize("family", [gpt2_checkpoint, llama_checkpoint])
def test_local_checkpoint_with_missing_unexpected_or_misshaped_tensors_is_refused_naming_them(tmp_path, family):
    from safetensors.torch import load_file, save_file

    model = family(tmp_path / "model")
    tensors = load_file(model / "model.safetensors")
    names = sorted(tensors)
    missing, misshaped = names[3], names[7]
    del tensors[missing]
    tensors[misshaped] = torch.zeros(3, 3)
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SynthactError) as error:
        load_model(ModelSpec(local=str(model)), "cpu")
    text = str(error.value)
    assert f"missing {missing}" in text and f"wrongly shaped {misshaped} ((3, 3) in the file" in text, text
    assert "unexpected extra.weight" in text and str(model) in text


def test_run_on_a_gpt2_checkpoint_without_some_tensors_stops_naming_them(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = gpt2_checkpoint(tmp_path / "model")
    tensors = load_file(model / "model.safetensors")
    gone = ["transformer.h.1.mlp.c_fc.weight", *[k for k in tensors if k.startswith("transformer.h.2.attn.")]]
    save_file({k: v for k, v in tensors.items() if k not in gone}, model / "model.safetensors", metadata={"format": "pt"})
    job = write_job(tmp_path / "j.yaml", model={"local": str(model)}, sae={"local": local_sae(tmp_path / "sae")},
                    corpus={"toy": {"n_docs": 64, "doc_len": 16}}, n_ctx=8)
    capsys.readouterr()  # what saving the checkpoint printed
    err = clean_error(capsys, "run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert all(name in err for name in gone) and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "results").exists()


def test_generation_settings_beyond_the_alive_latents_are_refused_before_any_shard(tmp_path, capsys):
    for fields, needle in [({"base_kinds": ["synthetic_baseline"], "generation": {"nearest_k": [600]}}, "nearest_k 600"),
                           ({"base_kinds": ["synthetic_structured"], "generation": {"anchor_pool": [600]}},
                            "anchor_pool 600")]:
        job = write_job(tmp_path / "j.yaml", **fields)
        err = clean_error(capsys, "run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
        assert needle in err and "of its 512 latents are alive" in err, err
    assert not (tmp_path / "out" / "results").exists()


def _all_dead(sae):
    sae.b_enc.fill_(-1e6)


def _nan_row(sae):
    sae.W_dec[5] = float("nan")


@pytest.mark.parametrize("change, d_sae, kinds, needle", [
    (_all_dead, 128, ["single_latent"], "all its latents are dead"),
    (_all_dead, 128, ["synthetic_structured"], "all its latents are dead"),
    (None, 4, ["synthetic_baseline"], "generation.nearest_k 10 needs at least 10"),
    (_nan_row, 128, ["real"], "NaN or infinite values in W_dec (first in row 5)"),
])
def test_degenerate_sae_is_one_paragraph_naming_the_cause(tmp_path, capsys, change, d_sae, kinds, needle):
    sae = local_sae(tmp_path / "sae", d_sae=d_sae, change=change)
    job = write_job(tmp_path / "j.yaml", model={"local": str(gpt2_checkpoint(tmp_path / "model"))},
                    sae={"local": sae}, corpus={"toy": {"n_docs": 64, "doc_len": 16}}, n_ctx=8, base_kinds=kinds)
    capsys.readouterr()  # what saving the checkpoint printed
    err = clean_error(capsys, "run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert needle in err and err.count("\n") == 1, err


def test_a_run_whose_every_shard_fails_says_why_once_and_exits_1(tmp_path, capsys):
    """Finite but huge weights in block 2: every shard's scan overflows float32 at run time. The run names the
    cause once for all the shards it failed and exits 1 (not "holds no results", exit 2)."""
    from safetensors.torch import load_file, save_file

    model = gpt2_checkpoint(tmp_path / "model")
    tensors = load_file(model / "model.safetensors")
    tensors["transformer.h.2.mlp.c_proj.weight"] *= 1e36
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    job = write_job(tmp_path / "j.yaml", model={"local": str(model)}, sae={"local": local_sae(tmp_path / "sae")},
                    corpus={"toy": {"n_docs": 64, "doc_len": 16}}, n_ctx=8, base_kinds=["real"],
                    directions=["isotropic"], bases_per_cell=6, shard_size=2)
    capsys.readouterr()  # what saving the checkpoint printed
    code, out, err = cli(capsys, "run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 1 and "Traceback" not in err and out == "", err
    assert "every shard failed (3 of 3); nothing was written" in err and "holds no results" not in err, err
    assert err.count("3 shard(s)") == 1 and "overflow float32" in err and "finite weights and inputs" in err, err


def test_a_nan_weight_met_during_a_scan_is_named_not_called_an_overflow(tmp_path):
    from synthact.run.local_executor import load_worker

    job = parse_job(toy_job(base_kinds=["real"], directions=["isotropic"], bases_per_cell=2, shard_size=2,
                            reference={"n_prompts": 128}, device="cpu", wandb=False))
    worker = load_worker(job, job.cells()[0].group, str(tmp_path / "stats"))
    with torch.no_grad():
        worker.backend.model.model.blocks[2].mlp.W_in[3, 5] = float("nan")  # past any check at load time
    with pytest.raises(SynthactError) as error:
        worker.run_shard(job.shards()[0])
    message = str(error.value)
    assert "NaN or infinite weights in blocks.2.mlp.W_in" in message and "overflow" not in message, message


@pytest.mark.parametrize("damage", ["model.safetensors", "config.json", "sae_weights.safetensors", "training.json"])
def test_damaged_toy_cache_files_are_rebuilt(tmp_path, monkeypatch, capsys, damage):
    from synthact.inputs.backends import load_backend
    from synthact.spec import CorpusSpec, SAESpec, ToyCorpusSpec, ToyModelSpec, ToySAESpec

    monkeypatch.setenv("SYNTHACT_CACHE", str(tmp_path / "cache"))
    specs = (ModelSpec(toy=ToyModelSpec(n_layers=3, d_model=16, n_heads=2, d_mlp=32, d_vocab=64, n_ctx=16,
                                        train_steps=2)),
             SAESpec(toy=ToySAESpec(d_sae=16, training_tokens=2048)), CorpusSpec(toy=ToyCorpusSpec(n_docs=64, doc_len=16)))
    loaded = load_backend(*specs, [1], "cpu")
    first = [[t.clone() for t in m.state_dict().values()] for m in (loaded.model.model, loaded.saes[1].sae)]  # mmapped
    [target] = [p for p in (tmp_path / "cache").rglob(damage)
                if ("saes" in p.parts) == (damage in ("sae_weights.safetensors", "training.json"))]
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 3])
    capsys.readouterr()
    again = load_backend(*specs, [1], "cpu")
    assert "is damaged" in capsys.readouterr().err
    for before, after in zip(first, (again.model.model, again.saes[1].sae)):
        assert all(torch.equal(a, b) for a, b in zip(before, after.state_dict().values()))


@pytest.mark.gpu
def test_a_cuda_device_this_machine_lacks_is_one_paragraph():
    from synthact.inputs.backends import resolve_device

    with pytest.raises(SynthactError, match=f"has {torch.cuda.device_count()} CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("weights, needle", [
    ("model.safetensors", "SafetensorError"),
    ("pytorch_model.bin", "UnpicklingError"),
])
def test_damaged_checkpoint_is_one_paragraph(tmp_path, capsys, weights, needle):
    from transformers import GPT2Config

    model = tmp_path / "model"
    GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=512, n_positions=64).save_pretrained(model)
    (model / weights).write_bytes(b"\x80\x04garbage" * 100)
    job = write_job(tmp_path / "j.yaml", model={"local": str(model)})
    err = clean_error(capsys, "run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert needle in err and f"model '{model}'" in err and err.count("\n") == 1, err


def test_latent_beyond_a_loaded_sae_is_refused_before_any_shard(tmp_path, capsys):
    job = write_job(tmp_path / "j.yaml", sae={"local": saved_toy_sae(1)}, directions=["latent:600"])
    err = clean_error(capsys, "run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert "latent:600 does not exist" in err and "512 latents" in err


def test_local_run_fails_only_the_group_that_cannot_load(tmp_path, capsys):
    job = write_job(tmp_path / "j.yaml", sae=[{"toy": {}}, {"local": str(tmp_path / "no-such-sae-{layer}")}])
    code, out, err = cli(capsys, "run", str(job), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 1 and "Traceback" not in err, err
    assert "no-such-sae-1" in out + err
    assert read_table(tmp_path / "out").num_rows == 2  # the toy SAE's group ran


def test_both_executors_share_the_failure_path(tmp_path):
    job = parse_job(toy_job(sae=[{"local": str(tmp_path / "no-such-sae-{layer}")}], base_kinds=["real"],
                            directions=["isotropic"], bases_per_cell=2, shard_size=1, device="cpu", wandb=False))
    summary = run_local(job, Store(tmp_path / "out", job), progress=False)
    assert len(summary.failures) == 2 and summary.fatal and "no-such-sae-1" in summary.fatal


# ---------------------------------------------------------------------- full or read-only disks


@pytest.fixture
def mount(tmp_path):
    """mount(size, readonly) -> a real tmpfs directory (tests run as root, as CI does)."""
    mounted = []

    def make(size: str, readonly: bool = False) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, f"cannot mount a tmpfs: {done.stderr}"
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_full_disk_while_claiming_leaves_the_directory_usable(mount):
    disk = mount("64k")
    (disk / "filler").write_bytes(b"x" * 60_000)
    job = parse_job(toy_job())
    store = Store(disk / "out", job)
    with pytest.raises(SynthactError, match="is full while claiming"):
        store.write_shard(job.shards()[0], rows(job.shards()[0]))
    assert not (disk / "out" / "job.json").exists()
    (disk / "filler").unlink()
    Store(disk / "out", job).write_shard(job.shards()[0], rows(job.shards()[0]))
    assert read_table(disk / "out").num_rows == 3


def test_full_disk_while_saving_statistics_is_one_paragraph(mount, tmp_path, capsys):
    disk = mount("48k")
    err = clean_error(capsys, "run", str(write_job(tmp_path / "j.yaml")), "--out", str(disk / "out"), "--no-progress")
    assert "full while saving reference statistics" in err, err


def test_read_only_out_is_one_paragraph(mount, tmp_path, capsys):
    err = clean_error(capsys, "run", str(write_job(tmp_path / "j.yaml")), "--out", str(mount("64k", True) / "out"),
                      "--no-progress")
    assert "Read-only" in err or "cannot" in err, err


# ---------------------------------------------------------------------- tracebacks become messages


def test_bad_inputs_are_one_paragraph(tmp_path, capsys):
    job = str(write_job(tmp_path / "j.yaml"))
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "file").write_text("")
    assert "not a file" in clean_error(capsys, "validate", str(tmp_path))
    assert "not a text file" in clean_error(capsys, "validate", str(tmp_path / "binary.yaml"))
    assert "is a regular file" in clean_error(capsys, "run", job, "--out", str(tmp_path / "file" / "out"))
    assert "foo://x" in clean_error(capsys, "run", job, "--out", "foo://x")
    assert "s3://no-such-bucket-synthact/x" in clean_error(capsys, "run", job, "--out", "s3://no-such-bucket-synthact/x")
    assert "not a Ray address" in clean_error(capsys, "run", job, "--out", str(tmp_path / "o1"), "--ray", "bogus")
    for content in ("", "{not json"):
        (tmp_path / "o2").mkdir(exist_ok=True)
        (tmp_path / "o2" / "job.json").write_text(content)
        assert "damaged" in clean_error(capsys, "run", job, "--out", str(tmp_path / "o2"))


@pytest.mark.parametrize("args", [["--steps", "0"], ["--n-ctx", "0"], ["--bases", "-1"], ["--device", "tpu"],
                                  ["--layer", "99", "--model", "toy"], ["--model", "toy", "--n-ctx", "100000"]])
def test_bad_bench_arguments_are_one_paragraph(capsys, args):
    with pytest.raises(SystemExit) as exit_code:
        code = main(["bench", *args])
        raise SystemExit(code)
    assert exit_code.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_verify_of_a_directory_with_a_damaged_claim_is_one_paragraph(tmp_path, capsys):
    (tmp_path / "job.json").write_text("{garbage")
    assert "job.json' is damaged" in clean_error(capsys, "verify", str(tmp_path))
    (tmp_path / "job.json").write_text("[1, 2]")
    assert "job.json' is damaged" in clean_error(capsys, "verify", str(tmp_path))


def test_report_on_a_read_only_output_directory(finished, mount, tmp_path, capsys):
    disk = mount("16m")
    subprocess.run(["cp", "-a", str(finished[1]), str(disk / "out")], check=True)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    assert "give --html FILE in a writable place" in clean_error(capsys, "report", str(disk / "out"))
    code, text, err = cli(capsys, "report", str(disk / "out"), "--html", str(tmp_path / "page.html"))
    assert code == 0 and (tmp_path / "page.html").is_file() and f"figures in {tmp_path / 'page-figures'}" in text, err


def test_compare_and_report_of_a_partial_sweep_say_so_at_the_top(finished, tmp_path, capsys):
    _, out = copy_of(finished, tmp_path)
    record = sorted((out / "manifest").glob("*.json"))[0]
    shard = out / json.loads(record.read_text())["file"]
    record.unlink()
    shard.unlink()
    code, text, _ = cli(capsys, "compare", str(out))
    assert code == 0 and text.startswith("NOTE: this sweep is incomplete: 3 of 4 shards done"), text
    code, text, _ = cli(capsys, "report", str(out))
    assert code == 0 and text.startswith("NOTE: this sweep is incomplete: 3 of 4 shards done"), text
    assert "3 of 4 shards done" in (out / "report.html").read_text()


def test_uri_helper_expands_home_and_resolves_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert resolve_location("~/runs/x")[2] == str(tmp_path / "runs" / "x")
    assert resolve_location("rel")[2] == str(tmp_path / "rel")
    assert resolve_location(f"file://{tmp_path}/u")[1] == f"{tmp_path}/u"
    with pytest.raises(SynthactError, match="cannot use output location 'foo://x'"):
        resolve_location("foo://x")


def test_names_are_identifiers():
    with pytest.raises(SpecError, match="name"):
        parse_job(toy_job(name="../../etc/x"))


# ---------------------------------------------------------------------- --ray local never hangs


@pytest.mark.timeout(600)  # catches a hang (waiting for a GPU that never comes) only
def test_ray_local_on_a_cpu_machine_ignores_ray_address(tmp_path, monkeypatch, capsys):
    """Default ray.num_gpus (1) on a machine without GPUs, RAY_ADDRESS pointing nowhere: it runs, on CPU actors
    (and without Ray's dashboard, as the job asks)."""
    import ray

    from synthact.run.ray_executor import actor_gpus, run_ray

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    data = toy_job(base_kinds=["real"], directions=["isotropic"], bases_per_cell=2, shard_size=1, device="auto",
                   scan={"steps": 4}, reference={"n_prompts": 128}, wandb=False, ray={"max_workers": 1, "dashboard": False})
    job = parse_job(data)
    refused = []

    class AskForCuda:  # while the instance started by run_ray is up: a CUDA job would be refused at once
        def cell_finished(self, rows) -> None:
            with pytest.raises(SynthactError, match="asks for 1.0 GPU") as error:
                actor_gpus(parse_job(dict(data, device="cuda")), started_here=True)
            refused.append(str(error.value))

    summary = run_ray(job, Store(tmp_path / "out", job), "local", progress=False, listeners=[AskForCuda()])
    assert summary.ok and summary.shards_done == 2
    assert refused and not ray.is_initialized()
    assert "Ray dashboard" not in capsys.readouterr().err
