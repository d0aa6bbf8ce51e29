"""`synthact bench` runs end to end on a toy model and reports consistent numbers (speed is not asserted)."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

import synthact.bench as bench
from synthact.bench import fixtures, generation, scan_speed, timing
from tests.helpers import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run_bench(capsys, *argv) -> str:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.run(parser.parse_args(list(argv))) == 0
    return capsys.readouterr().out


def test_bench_json_on_toy_model(capsys):
    out = run_bench(capsys, "--json", "--model", "toy", "--device", "cpu", "--bases", "4", "--plain-bases", "2",
                    "--steps", "10", "--js")
    r = json.loads(out)
    for key in ("plain_points_per_s", "fast_points_per_s", "speedup_vs_plain", "fast_tflops",
                "peak_tflops_fp32", "max_abs_dev_l2", "device"):
        assert key in r, key
    assert r["device"].startswith("cpu") and r["points_per_base"] == 11 and r["js"] is True
    assert set(r["precisions"]) == {"float32", "bfloat16"}
    fp32 = r["precisions"]["float32"]
    assert r["fast_points_per_s"] == fp32["points_per_s"] > 0 and r["plain_points_per_s"] > 0
    assert r["speedup_vs_plain"] == pytest.approx(r["fast_points_per_s"] / r["plain_points_per_s"])
    assert r["fast_tflops"] == pytest.approx(r["fast_points_per_s"] * r["flops_per_point"] / 1e12)
    # the plain loop: every block and the logits at each of the n_ctx tokens; the fast path: one position from L on
    assert r["flop_ratio"] == pytest.approx(r["plain_flops_per_point"] / r["flops_per_point"])
    assert r["plain_flops_per_point"] > r["n_ctx"] * r["flops_per_point"]
    assert r["peak_tflops_fp32"] > 0
    assert 0 <= r["max_abs_dev_l2"] < 1e-3  # fp32 fast vs the paper's plain path
    table = scan_speed.format_table(r)
    for row in ("plain (paper: cache->host)", "plain (scan_plain)", "fast float32", "fast bfloat16", "matmul probe"):
        assert row in table


def test_flops_per_point_counts_the_matmuls():
    cfg = fixtures.build_model("toy", 10, torch.device("cpu")).cfg
    d, f, v = cfg.d_model, cfg.d_mlp, cfg.d_vocab_out
    per_block = 2 * d * 3 * d + 2 * 2 * d * 10 + 2 * d * d + 2 * 2 * d * f
    assert timing.flops_per_point(cfg, 1, 3, 10, js=False) == 3 * per_block
    assert timing.flops_per_point(cfg, 0, 3, 10, js=True) == 4 * per_block + 2 * d * v


def test_generation_and_end_to_end_on_toy_model(capsys):
    """--generation times every kind; --e2e splits wall time into phases that add up."""
    from synthact.spec import KINDS

    common = ["--json", "--model", "toy", "--device", "cpu", "--steps", "4", "--d-sae", "256"]
    r = json.loads(run_bench(capsys, *common, "--bases", "2", "--plain-bases", "1", "--generation", "3"))
    g = r["generation"]
    assert set(g["kinds"]) == set(KINDS) | {f"paired {name}" for name in generation.CONSTRUCTIONS}
    assert g["bases"] == 3 and g["stats_seconds"] > 0
    assert all(k["seconds"] > 0 and k["fraction_of_scan"] > 0 for k in g["kinds"].values())
    assert 4 <= g["mean_l0"] <= 256
    assert "synthetic_structured" in scan_speed.format_table(r)
    # each phase's time and the peak RSS so far beside it (statistics, the tables, each kind, diagnostics)
    assert set(g["phases"]) == {"statistics", "co-occurrence table", "held-out tables", "diagnostics"}
    rss = [g["peak_rss_gb_before"], *(p["peak_rss_gb"] for p in g["phases"].values()), g["peak_rss_gb"]]
    assert all(p["seconds"] > 0 for p in g["phases"].values()) and 0 < rss[0] and max(rss) == g["peak_rss_gb"]
    assert all(0 < k["peak_rss_gb"] <= g["peak_rss_gb"] for k in g["kinds"].values())
    assert "peak RSS" in scan_speed.format_table(r) and len(g["load_average"]) == 3

    e = json.loads(run_bench(capsys, *common, "--e2e", "3"))
    assert e["points"] == 3 * len(KINDS) * 5
    assert set(e["seconds"]) == {"load", "statistics", "generation", "scan", "write"}
    assert sum(e["seconds"].values()) == pytest.approx(e["total_seconds"], rel=0.05)
    assert "statistics" in generation.format_e2e(e)


def test_family_table_with_tiny_shapes(capsys, monkeypatch):
    """--family all: each family's checkpoint goes through model.local; fast agrees with plain (tiny shapes here)."""
    tiny = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64, vocab_size=96)
    shapes = {
        "gpt2": dict(n_embd=32, n_layer=3, n_head=4, vocab_size=96, n_positions=64),
        "neox": dict(**tiny, intermediate_size=64, rotary_pct=0.25),
        "llama": dict(**tiny, num_key_value_heads=2, intermediate_size=48),
        "gemma2": dict(**tiny, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, intermediate_size=48),
        "mistral": dict(**tiny, num_key_value_heads=2, intermediate_size=48, sliding_window=4),
        "qwen2": dict(**tiny, num_key_value_heads=2, intermediate_size=48),
        "qwen3": dict(**tiny, num_key_value_heads=2, head_dim=12, intermediate_size=48),
    }
    for family, shape in shapes.items():
        config_class, label, _ = fixtures.FAMILIES[family]
        monkeypatch.setitem(fixtures.FAMILIES, family, (config_class, label, shape))
    common = ["--device", "cpu", "--bases", "3", "--plain-bases", "2", "--steps", "6", "--family", "all"]
    reports = json.loads(run_bench(capsys, "--json", *common))
    assert [r["model"] for r in reports] == list(fixtures.FAMILIES)
    for r in reports:
        assert r["fast_points_per_s"] > 0 and r["max_rel_dev_l2"] < 1e-4, r["model"]
    table = scan_speed.format_families(reports)
    assert "Pythia-160m" in table and "gemma2" in table and "qwen3" in table and "% probe" in table
    assert "x FLOPs" in table and all(r["flop_ratio"] > 1 for r in reports)


def test_flops_count_grouped_query_attention_and_gated_mlp():
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=8, d_head=8, n_key_value_heads=2, d_mlp=96,
                                  d_vocab=10, n_ctx=16, act_fn="silu", gated_mlp=True, normalization_type="RMS")
    per_block = 2 * 64 * (64 + 2 * 16) + 2 * 2 * 64 * 10 + 2 * 64 * 64 + 3 * 2 * 64 * 96
    assert timing.flops_per_point(cfg, 0, 1, 10, js=False) == 2 * per_block


@pytest.mark.parametrize("argv", [["--model", "toy", "--layer", "4"], ["--family", "all", "--layer", "12"]])
def test_a_layer_the_model_lacks_is_refused_before_anything_is_built(argv):
    from synthact.errors import SynthactError

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(SynthactError, match=r"out of range .* lower --layer"):
        bench.run(parser.parse_args([*argv, "--device", "cpu"]))


def test_memory_table_with_tiny_shapes(capsys, monkeypatch):
    """--memory: each depth loads in a fresh process; the full depth follows from the two deepest (tiny shapes here)."""
    from synthact.bench import memory

    tiny = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, vocab_size=512)
    monkeypatch.setattr(memory, "SHAPES", {"tiny-llama": ("LlamaConfig", 6, tiny)})
    r = json.loads(run_bench(capsys, "--json", "--memory", "1", "2"))
    assert [x["layers"] for x in r["rows"]] == [1, 2]
    one, two = r["rows"]
    assert 0 < one["weights"] < two["weights"] and one["model_params"] < two["model_params"]
    assert all(x["scan_peak"] >= x["load_peak"] > 0 for x in r["rows"])
    full = r["full_depth"]["tiny-llama"]
    assert full["layers"] == 6
    assert full["weights"] == pytest.approx(two["weights"] + 4 * (two["weights"] - one["weights"]))
    assert "full depth, extrapolated" in memory.format_memory(r)


RANDOM_SAE_PEAK = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
from synthact.bench import fixtures

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

model = fixtures.build_model("toy", 10, torch.device("cpu"))
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from the current size
before = status("VmRSS")
sae = fixtures.random_sae(model, 1, int(sys.argv[1]), torch.device("cpu"))
print(json.dumps({"extra": status("VmHWM") - before, "weight": sae.W_enc.numel() * 4, "device": str(sae.device)}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads the peak memory from /proc (Linux)")
def test_the_bench_random_sae_holds_its_two_weights_and_no_third_copy():
    """The random SAE of `bench --generation --d-sae N` peaks at its own two weights (W_enc, W_dec) plus small
    blocks, not at sae_lens's initialisation's three copies of W_dec (3.2 GB extra at d_sae 1,048,576)."""
    done = subprocess.run([sys.executable, "-c", RANDOM_SAE_PEAK, str(1 << 19)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["device"] == "cpu"
    # Two weights of 128 MiB each and blocks of 16 MiB; the old construction held at least three weights at once.
    assert 2 * r["weight"] <= r["extra"] < 2.5 * r["weight"], r
