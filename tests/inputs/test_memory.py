"""Model memory: a local checkpoint loads in about one copy of its weights, in the precision asked for; the
estimate `synthact validate` prints counts the parameters the loaded model has, from the shapes alone."""

import json
import os
import subprocess
import sys

import pytest

from synthact.inputs import memory
from synthact.inputs.backends import load_model
from synthact.spec import ModelSpec
from tests.helpers import ROOT

WRITE = """
import sys, torch, transformers as T
torch.manual_seed(0)
cfg = T.LlamaConfig(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=4, intermediate_size=1536, tie_word_embeddings=False)
T.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(sys.argv[1])
"""

LOAD = """
import json, sys, warnings
warnings.simplefilter("ignore")
from synthact.inputs.backends import load_model
from synthact.spec import ModelSpec

def high_water():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))

before = high_water()
model = load_model(ModelSpec(local=sys.argv[1], from_pretrained_kwargs={"dtype": "bfloat16"}), "cpu").model
print(json.dumps({"extra": high_water() - before, "bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()})}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from /proc (Linux)")
def test_a_local_checkpoint_loads_in_its_precision_within_about_one_copy_of_its_weights(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", WRITE, str(tmp_path / "model")], check=True, env=env, capture_output=True)
    done = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "model")], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["dtypes"] == ["torch.bfloat16"]
    slices = memory.PROCESSING_COPIES * 4 * 3 * memory.SLICE_ELEMENTS  # the float32 copies of one MLP slice
    # One copy of the weights plus the slices in flight, with room for what the loader imports on the way
    # (allocator and import arenas vary by machine); TransformerLens's whole-model processing: about 8 copies.
    assert r["extra"] < r["bytes"] + 2.5 * slices, r


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "qwen3"])
def test_the_estimate_counts_the_parameters_of_the_loaded_model(family, tmp_path):
    import transformers as T

    configs = {
        "gpt2": T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32),
        "llama": T.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=48, tie_word_embeddings=False),
        "gemma2": T.Gemma2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, intermediate_size=48),
        "qwen3": T.Qwen3Config(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=24, intermediate_size=48),
    }
    hf = T.AutoModelForCausalLM.from_config(configs[family])
    hf.save_pretrained(tmp_path)
    shape = memory.model_shape(ModelSpec(local=str(tmp_path)))
    unprocessed = load_model(ModelSpec(local=str(tmp_path), from_pretrained_kwargs={"fold_ln": False}), "cpu").model
    loaded = sum(p.numel() for p in unprocessed.parameters())
    vectors = shape.n_layers * ((shape.n_heads + 2 * shape.n_kv_heads) * shape.d_head + shape.d_mlp + 6 * shape.d_model)
    assert abs(shape.params() - loaded) <= vectors + 2 * shape.d_model  # biases and norms, which some families lack
    stored = sum(t.numel() for t in {p.data_ptr(): p for p in hf.parameters()}.values())
    assert abs(shape.checkpoint_params() - stored) <= vectors + 2 * shape.d_model
