"""The fast path keeps no copy of the model's weights (views of its parameters, whatever the compute dtype), and a
model loaded in bf16 scans in float32 matmuls over its bf16 weights: the plain path of the same model upcast to
float32 is what it computes."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from synthact.scan import scan_fast, scan_plain
from synthact.scan.weights import read_weights
from tests.helpers import ROOT, assert_agree, scan_inputs

warnings.filterwarnings("ignore", category=DeprecationWarning)
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402


def gated_model(dtype=torch.float32) -> HookedTransformer:
    """A Llama-like model (GQA, gated MLP, RMSNorm, rotary) whose weights are bf16 values, held in `dtype`."""
    cfg = HookedTransformerConfig(n_layers=3, d_model=64, n_heads=4, d_head=16, n_key_value_heads=2, d_mlp=96,
                                  d_vocab=128, n_ctx=32, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                                  positional_embedding_type="rotary", rotary_dim=16, seed=0, device="cpu", dtype=dtype)
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p.float() + 0.05 * torch.randn(p.shape, generator=gen)).to(torch.bfloat16))
    return model.eval()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_fast_path_reads_views_of_the_weights_not_copies(dtype):
    model = gated_model()
    weights = read_weights(model, dtype, position=9)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    blk = weights.blocks[1]
    for name in ("w_q", "w_k", "w_v", "w_o", "w_in", "w_gate", "w_out"):
        assert getattr(blk, name).untyped_storage().data_ptr() in params, name
    assert weights.w_u.untyped_storage().data_ptr() in params


def test_a_bf16_model_scans_in_float32_over_its_bf16_weights():
    half = gated_model(torch.bfloat16)
    upcast = gated_model(torch.float32)  # the same bf16 values, held and computed in float32
    layer, read = 1, [2]
    inputs = scan_inputs(upcast, layer, n_bases=2, n_ctx=9, steps=10)
    fast = scan_fast(half, layer, read, *inputs, js=True, dtype="float32")
    # the prefix keys/values come from the bf16 model's own forward; the scanned position is float32 throughout
    reference = scan_plain(upcast, layer, read, *inputs, js=True)
    scale = reference.l2[2].abs().max()
    assert (fast.l2[2] - reference.l2[2]).abs().max() <= 2e-2 * scale
    assert_agree(scan_fast(upcast, layer, read, *inputs, js=True), reference, read, js=True)


CAST_PEAK = """
import json, torch
from synthact.scan import fast

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

w = torch.randn(1024, 32768).to(torch.bfloat16)  # 2^25 entries: 128 MiB once cast to float32
x = torch.randn(2, 1024)
fast._linear(x, w[:, :8], None, torch.float32)  # the first matmul's own start-up memory is not the cast's
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from the current size
before = status("VmRSS")
out = fast._linear(x, w, None, torch.float32)
extra = status("VmHWM") - before
assert torch.allclose(out, x @ w.float(), rtol=1e-4, atol=1e-3)
print(json.dumps({"extra": extra, "cast": w.numel() * 4}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads the peak memory from /proc (Linux)")
def test_a_weight_of_another_dtype_is_cast_in_slices_not_whole():
    """A bf16 weight multiplied in float32 costs a slice of its cast at a time (CAST_ELEMENTS), not a float32 copy of
    the whole matrix (85 MB for one of Gemma-2-2B's MLP matrices, the scan's peak above the weights)."""
    done = subprocess.run([sys.executable, "-c", CAST_PEAK], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    # one buffer of 16 MiB; the whole cast was 128 MiB
    assert r["extra"] < 0.25 * r["cast"], r
