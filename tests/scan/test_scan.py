"""The fast scan path agrees with the plain reference path (CPU fp32; CUDA checks are marked gpu)."""

import warnings

import pytest
import torch

from synthact.errors import SynthactError
from synthact.scan import fast_path_unsupported, js_distance, scan, scan_fast, scan_plain

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
warnings.filterwarnings("ignore", category=DeprecationWarning)
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from tests.helpers import TOL, assert_agree, scan_inputs


def toy_model(seed=0, folded=False, device="cpu", **overrides) -> HookedTransformer:
    """A random GPT-2-architecture model with every weight and bias (LayerNorm included) perturbed."""
    cfg = dict(
        n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=300, n_ctx=32,
        act_fn="gelu_new", normalization_type="LN", seed=seed, device="cpu",
    )
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen).to(p.device))
    if folded:
        model.load_and_process_state_dict(
            model.state_dict(), fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
        )
    return model.to(device, print_details=False).eval()


@pytest.mark.parametrize("folded", [False, True], ids=["LN", "LNPre-folded"])
@pytest.mark.parametrize("layer,read_layers", [(0, [0, 3]), (1, [1, 2, 3]), (2, [3])])
def test_fast_matches_plain_on_toy_model(folded, layer, read_layers):
    model = toy_model(folded=folded)
    assert model.cfg.normalization_type == ("LNPre" if folded else "LN")
    assert fast_path_unsupported(model) is None
    inputs = scan_inputs(model, layer)
    plain = scan_plain(model, layer, read_layers, *inputs, js=True)
    fast = scan_fast(model, layer, read_layers, *inputs, js=True)
    assert_agree(fast, plain, read_layers, js=True)


def test_curves_start_at_zero_and_js_is_a_bounded_distance():
    model = toy_model(seed=3)
    inputs = scan_inputs(model, 1, n_bases=4)
    for result in (scan_plain(model, 1, [3], *inputs, js=True), scan_fast(model, 1, [3], *inputs, js=True)):
        assert result.l2[3].shape == result.js.shape == (4, 21)
        assert result.l2[3].dtype == result.js.dtype == torch.float32
        assert torch.all(result.l2[3][:, 0] == 0) and torch.all(result.js[:, 0] == 0)
        assert torch.all(result.js >= 0) and torch.all(result.js <= 1)
        assert torch.all(result.l2[3][:, 1:] > 0)


def test_js_distance_extremes():
    logits = torch.randn(5, 50)
    assert torch.all(js_distance(logits, logits) == 0)
    disjoint = torch.full((2, 4), -1e4)
    disjoint[0, 0] = disjoint[1, 1] = 0.0
    assert torch.allclose(js_distance(disjoint[:1], disjoint[1:]), torch.tensor([1.0]), atol=1e-5)


def test_tiny_chunks_split_bases_and_points():
    """max_points below N+1 splits each base's points over chunks (each led by A_0): same curves."""
    model = toy_model(seed=1)
    inputs = scan_inputs(model, 1, n_bases=3, steps=20)
    whole = scan_fast(model, 1, [2, 3], *inputs, js=True)
    for max_points in (2, 5, 21, 50):
        chunked = scan_fast(model, 1, [2, 3], *inputs, js=True, max_points=max_points)
        assert_agree(chunked, whole, [2, 3], js=True)


def test_out_of_memory_halves_the_chunk(monkeypatch, caplog):
    """A chunk that runs out of memory is retried with half the points until it fits."""
    import synthact.scan.fast as scan_module

    model = toy_model(seed=2)
    inputs = scan_inputs(model, 1, n_bases=4, steps=10)
    expected = scan_fast(model, 1, [3], *inputs)
    real_run_chunk = scan_module._run_chunk
    sizes = []

    def run_chunk_with_small_memory(weights, layer, read_layers, kv, points, js):
        sizes.append(points.shape[0] * points.shape[1])
        if sizes[-1] > 6:
            raise torch.OutOfMemoryError("simulated: the chunk does not fit")
        return real_run_chunk(weights, layer, read_layers, kv, points, js)

    monkeypatch.setattr(scan_module, "_run_chunk", run_chunk_with_small_memory)
    result = scan_fast(model, 1, [3], *inputs, max_points=64)
    assert max(sizes) > 6 and sizes[-1] <= 6
    assert "out of memory" in caplog.text
    assert torch.allclose(result.l2[3], expected.l2[3], atol=TOL * expected.l2[3].max())


def test_single_token_prompt_has_no_prefix():
    model = toy_model(seed=4)
    inputs = scan_inputs(model, 0, n_bases=2, n_ctx=1, steps=8)
    assert_agree(scan_fast(model, 0, [2], *inputs), scan_plain(model, 0, [2], *inputs), [2], js=False)


def test_unsupported_model_falls_back_to_plain(caplog):
    model = toy_model(seed=5, positional_embedding_type="shortformer")
    why = fast_path_unsupported(model)
    assert why and "shortformer" in why
    inputs = scan_inputs(model, 1, n_bases=2, steps=6)
    with pytest.raises(SynthactError, match="shortformer"):
        scan_fast(model, 1, [3], *inputs)
    result = scan(model, 1, [3], *inputs)
    assert "plain path" in caplog.text
    expected = scan_plain(model, 1, [3], *inputs)
    assert torch.equal(result.l2[3], expected.l2[3])


def test_bad_inputs_raise_synthact_error():
    model = toy_model()
    tokens, base, direction, coeffs = scan_inputs(model, 1, n_bases=2, steps=4)
    with pytest.raises(SynthactError, match="read layers"):
        scan_fast(model, 2, [1], tokens, base, direction, coeffs)
    with pytest.raises(SynthactError, match="direction must be"):
        scan_fast(model, 1, [3], tokens, base, direction[:1], coeffs)
    with pytest.raises(SynthactError, match="dtype"):
        scan_fast(model, 1, [3], tokens, base, direction, coeffs, dtype="float16")


def test_bfloat16_is_close_and_weights_are_cached_per_dtype():
    import synthact.scan.weights as weights_module

    model = toy_model(seed=6)
    inputs = scan_inputs(model, 1)
    ref = scan_fast(model, 1, [3], *inputs)
    bf16 = scan_fast(model, 1, [3], *inputs, dtype="bfloat16")
    dev = (bf16.l2[3] - ref.l2[3]).abs().max() / ref.l2[3].max()
    assert 0 < dev < 0.1, f"bf16 relative deviation {dev:.3g}"
    assert weights_module._WEIGHT_CACHE[model][0][0] == ("bfloat16", None)  # key: dtype, rotary position
    with torch.no_grad():  # editing the weights invalidates the cache
        model.blocks[2].mlp.W_out.mul_(2.0)
    changed = scan_fast(model, 1, [3], *inputs)
    assert_agree(changed, scan_plain(model, 1, [3], *inputs), [3], js=False)


def test_local_gpt2_checkpoint_loaded_through_backends(tmp_path):
    """A GPT-2 checkpoint saved by transformers, loaded by synthact.inputs.backends, scanned both ways."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from synthact.inputs.backends import load_model
    from synthact.spec import ModelSpec

    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=48, n_head=4, n_inner=96, vocab_size=200, n_positions=32)
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():  # non-trivial LayerNorm weights and biases everywhere
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    for fold in (False, True):
        spec = ModelSpec(local=str(tmp_path), from_pretrained_kwargs={"fold_ln": fold, "center_writing_weights": fold})
        model = load_model(spec, device="cpu").model
        assert model.cfg.normalization_type == ("LNPre" if fold else "LN")
        assert fast_path_unsupported(model) is None
        inputs = scan_inputs(model, 1, n_bases=2, steps=20)
        plain = scan_plain(model, 1, [1, 2], *inputs, js=True)
        fast = scan_fast(model, 1, [1, 2], *inputs, js=True)
        assert_agree(fast, plain, [1, 2], js=True)


# ----------------------------------------------------------------------------- CUDA (pytest -m gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", TOL), ("tf32", 3e-2), ("bfloat16", 0.15)])
def test_fast_matches_plain_on_cuda(dtype, tol):
    assert torch.cuda.is_available(), "the gpu tests need CUDA"
    model = toy_model(seed=7, device="cuda")
    inputs = scan_inputs(model, 1, n_bases=8, steps=50)
    plain = scan_plain(model, 1, [2, 3], *inputs, js=True)
    fast = scan_fast(model, 1, [2, 3], *inputs, js=True, dtype=dtype)
    for r in (2, 3):
        dev = ((fast.l2[r] - plain.l2[r]).abs().max() / plain.l2[r].max()).item()
        print(f"cuda {dtype}: read layer {r}: max |fast - plain| / max d = {dev:.3g}")
        assert dev <= tol
    cpu = scan_plain(toy_model(seed=7), 1, [3], *inputs)
    assert (cpu.l2[3] - plain.l2[3]).abs().max() <= TOL * plain.l2[3].max()
