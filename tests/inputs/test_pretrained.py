"""A pretrained name loads piece by piece (inputs/processing.py) into the model TransformerLens's own from_pretrained
builds, in the precision asked for: checked on tiny checkpoints put into a Hugging Face cache of the test's own under
names TransformerLens knows (GPT-2, and Qwen2 for grouped-query attention and projection biases), read offline in a
fresh process (the hub's cache location is fixed when it is imported)."""

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

CACHE = """
import sys, torch, transformers as T
from pathlib import Path
hub = Path(sys.argv[1])
for repo, cfg in [("gpt2", T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32, n_ctx=32)),
                  ("Qwen/Qwen2-0.5B", T.Qwen2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64))]:
    folder = hub / ("models--" + repo.replace("/", "--"))
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder / "snapshots" / ("0" * 40))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)
"""

COMPARE = """
import json, warnings
warnings.simplefilter("ignore")
import torch
from transformer_lens import HookedTransformer
from synthact.inputs.backends import load_model
from synthact.spec import ModelSpec
out = {}
tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
for name in ["gpt2", "Qwen/Qwen2-0.5B"]:
    ours = load_model(ModelSpec(pretrained=name), "cpu").model
    theirs = HookedTransformer.from_pretrained(name)
    mine, ref = dict(ours.named_parameters()), dict(theirs.named_parameters())
    half = load_model(ModelSpec(pretrained=name, from_pretrained_kwargs={"dtype": "bfloat16"}), "cpu").model
    out[name] = {
        "same_names": sorted(mine) == sorted(ref),
        "max_param_diff": max(float((mine[k] - ref[k]).abs().max()) for k in ref),
        "max_logit_diff": float((ours(tokens) - theirs(tokens)).abs().max()),
        "bf16_dtypes": sorted({str(p.dtype) for p in half.parameters()}),
        "bf16_logit_diff": float((half(tokens).float() - theirs(tokens)).abs().max()),
    }
print(json.dumps(out))
"""


def test_pretrained_names_load_piecewise_as_transformer_lens_loads_them(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", CACHE, str(tmp_path / "hub")], check=True, env=env, capture_output=True)
    done = subprocess.run([sys.executable, "-c", COMPARE], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        assert r["same_names"] and r["max_param_diff"] < 1e-6 and r["max_logit_diff"] < 1e-5, (name, r)
        assert r["bf16_dtypes"] == ["torch.bfloat16"] and r["bf16_logit_diff"] < 0.1, (name, r)
