"""`synthact bench --memory`: the peak host memory of loading a model of today's shapes (random weights written with
`transformers`, in bfloat16) through `model: {local: DIR}` in bfloat16, reading its weights for the fast path and
scanning a few bases on it, against the weights' own size. Each depth is measured in a fresh process (its peak
resident memory, less what the process held after importing torch, TransformerLens and sae_lens); two depths give
the memory per block and the fixed part, from which the figure at the model's full depth follows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

SHAPES = {  # name: (transformers config class, full depth, config kwargs)
    "gemma-2-2b": ("Gemma2Config", 26, dict(
        hidden_size=2304, num_attention_heads=8, num_key_value_heads=4, head_dim=256, intermediate_size=9216,
        vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096)),
    "llama-3.1-8b": ("LlamaConfig", 32, dict(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
        max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})),
}

_WRITE = """
import json, sys, torch, transformers
config_class, layers, kwargs, path = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
config = getattr(transformers, config_class)(num_hidden_layers=layers, **kwargs)
transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
"""

_MEASURE = """
import json, math, sys, time, warnings
warnings.simplefilter("ignore")
import torch
from safetensors import safe_open
from synthact.inputs.backends import load_model
from synthact.scan import scan_fast
from synthact.spec import ModelSpec

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

path, scan_dtype = sys.argv[1], sys.argv[2]
base, start = status("VmRSS"), time.perf_counter()
model = load_model(ModelSpec(local=path, from_pretrained_kwargs={"dtype": "bfloat16"}), "cpu").model
seconds = time.perf_counter() - start
loaded = status("VmHWM")
tokens = torch.randint(0, model.cfg.d_vocab, (2, 10))
base_vectors = model(tokens, stop_at_layer=0)[:, -1].float()
direction = torch.nn.functional.normalize(torch.randn_like(base_vectors), dim=-1)
scan_fast(model, 0, [model.cfg.n_layers - 1], tokens, base_vectors, direction,
          torch.arange(11.0)[None].repeat(2, 1), dtype=scan_dtype)
with safe_open(f"{path}/model.safetensors", "pt") as f:  # bf16: 2 bytes per entry
    file_bytes = sum(math.prod(f.get_slice(k).get_shape()) * 2 for k in f.keys())
print(json.dumps({"base": base, "load_peak": loaded - base, "scan_peak": status("VmHWM") - base,
                  "weights": file_bytes, "model_params": sum(p.numel() * p.element_size() for p in model.parameters()),
                  "load_seconds": seconds}))
"""


def measure(name: str, layers: int, scan_dtype: str = "float32") -> dict:
    """One depth of one shape, in fresh processes: bytes (peaks less the process's size after its imports)."""
    config_class, _, kwargs = SHAPES[name]
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix=f"synthact-memory-{name}-") as path:
        subprocess.run([sys.executable, "-c", _WRITE, config_class, str(layers), json.dumps(kwargs), path],
                       check=True, capture_output=True, env=env)
        done = subprocess.run([sys.executable, "-c", _MEASURE, path, scan_dtype], capture_output=True, text=True,
                              env=env)
    if done.returncode:
        raise RuntimeError(f"measuring {name} at {layers} layers failed: {done.stderr[-2000:]}")
    return {"shape": name, "layers": layers, **json.loads(done.stdout.strip().splitlines()[-1])}


def memory_benchmark(depths: list[int], names: list[str] | None = None, scan_dtype: str = "float32") -> dict:
    """Every shape at every depth, and per shape the peak at full depth from the two deepest measurements."""
    import datetime

    import torch

    rows = [measure(name, n, scan_dtype) for name in names or list(SHAPES) for n in depths]
    full = {}
    for name in names or list(SHAPES):
        mine = sorted((r for r in rows if r["shape"] == name), key=lambda r: r["layers"])
        if len(mine) >= 2:
            a, b = mine[-2], mine[-1]
            depth = SHAPES[name][1]
            slope = {k: (b[k] - a[k]) / (b["layers"] - a["layers"]) for k in ("scan_peak", "weights", "model_params")}
            at = {k: b[k] + slope[k] * (depth - b["layers"]) for k in slope}
            full[name] = {"layers": depth, **at, "ratio": at["scan_peak"] / at["weights"],
                          "ratio_to_model": at["scan_peak"] / at["model_params"]}
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "scan_dtype": scan_dtype,
            "rows": rows, "full_depth": full}


def format_memory(r: dict) -> str:
    gib = 2**30
    lines = [f"synthact bench --memory: local bf16 checkpoints (random weights), loaded in bfloat16, weights read for the "
             f"fast path and 2 bases scanned ({r['scan_dtype']} matmuls); torch {r['torch']}, {r['date']}",
             f"{'shape':<14}{'layers':>7}{'weights':>10}{'model':>10}{'load peak':>11}{'scan peak':>11}{'x weights':>11}"
             f"{'load s':>8}"]
    for x in r["rows"]:
        lines.append(f"{x['shape']:<14}{x['layers']:>7}{x['weights'] / gib:>9.2f}G{x['model_params'] / gib:>9.2f}G"
                     f"{x['load_peak'] / gib:>10.2f}G{x['scan_peak'] / gib:>10.2f}G{x['scan_peak'] / x['weights']:>11.2f}"
                     f"{x['load_seconds']:>8.0f}")
    for name, f in r["full_depth"].items():
        lines.append(f"{name:<14}{f['layers']:>7}{f['weights'] / gib:>9.2f}G{f['model_params'] / gib:>9.2f}G"
                     f"{'':>11}{f['scan_peak'] / gib:>10.2f}G{f['ratio']:>11.2f}   (full depth, extrapolated)")
    lines.append("weights: the checkpoint's tensors in bf16; model: the HookedTransformer's parameters (it holds the "
                 "unembedding apart from a tied embedding); peaks: resident memory above the process after its imports.")
    return "\n".join(lines)
