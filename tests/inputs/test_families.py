"""Each model family end to end: a random-weight HF checkpoint written with transformers, loaded through
model.local, an sae_lens SAE on hook_resid_pre and on hook_resid_post, a sweep on the fast path, and the
stored rows recomputed with the plain path."""

import warnings

import numpy as np
import pytest
import torch

from synthact.errors import SynthactError
from synthact.generation.directions import direction_from_provenance
from synthact.generation.kinds import from_provenance
from synthact.inputs.backends import PROCESSING_DEFAULTS, load_model, load_sae
from synthact.results import read_table
from synthact.run.local_executor import run_local
from synthact.run.store import Store
from synthact.run.worker import Worker
from synthact.scan import fast_path_unsupported, scan_fast, scan_plain
from synthact.spec import ModelSpec, SAESpec, parse_job
from tests.helpers import assert_agree, scan_inputs, toy_job

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

VOCAB, D, LAYERS, N_CTX = 128, 64, 3, 10


def hf_config(family: str):
    """A tiny config of each family, with the features the fast path must get right switched on."""
    import transformers as T

    common = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=4,
                  max_position_embeddings=64)
    if family == "gpt2":
        return T.GPT2Config(n_layer=LAYERS, n_embd=D, n_head=4, vocab_size=VOCAB, n_positions=64)
    if family == "neox":  # Pythia: parallel attention + MLP, rotary on a quarter of each head
        return T.GPTNeoXConfig(**common, intermediate_size=128, rotary_pct=0.25)
    if family == "llama":  # grouped-query attention, gated MLP, RMSNorm
        return T.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=96, rope_theta=500000.0)
    if family == "gemma2":  # pre+post norms, soft caps, sliding window shorter than the prompt, own attn scale
        return T.Gemma2Config(**common, num_key_value_heads=2, head_dim=16, intermediate_size=96, sliding_window=6,
                              query_pre_attn_scalar=24, attn_logit_softcapping=3.0, final_logit_softcapping=5.0)
    if family == "mistral":  # every layer local: sliding window shorter than the prompt
        return T.MistralConfig(**common, num_key_value_heads=2, intermediate_size=96, sliding_window=6)
    if family == "qwen2":  # biases on the query, key and value projections
        return T.Qwen2Config(**common, num_key_value_heads=2, intermediate_size=96, tie_word_embeddings=False)
    if family == "qwen3":  # QK norm per head, head_dim unlike hidden_size / heads
        return T.Qwen3Config(**common, num_key_value_heads=2, head_dim=24, intermediate_size=96)
    raise ValueError(family)


FAMILIES = ["gpt2", "neox", "llama", "gemma2", "mistral", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    """(family, directory, HF model) with every weight perturbed, so norms and biases are not trivial."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config(request.param), attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp(request.param)
    shards = {"max_shard_size": "100KB"} if request.param == "qwen2" else {}  # one family's checkpoint in shards
    hf.save_pretrained(path, **shards)
    return request.param, path, hf


def save_sae(model, hook: str, path) -> str:
    """A StandardSAE on `hook` built from the model's own activations there (sparse codes), saved by sae_lens."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (64, N_CTX), generator=gen)
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    acts = cache[hook][:, -1]
    d_sae = 256
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, D, generator=gen), dim=-1)
    pre = (acts - acts.mean(0)) @ w_dec.T
    meta = SAEMetadata(hook_name=hook, model_name="tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_dec.copy_(acts.mean(0))
        sae.b_enc.fill_(-float(pre.quantile(0.9)))  # about 10% of latents fire
    sae.save_model(path)
    return str(path)


def test_local_checkpoint_matches_hf_and_runs_fast(checkpoint):
    """TransformerLens's conversion of the directory gives HF's logits; the fast path serves it."""
    family, path, hf = checkpoint
    tokens = torch.randint(0, VOCAB, (2, N_CTX), generator=torch.Generator().manual_seed(1))
    for fold in (False, True):
        kwargs = dict(fold_ln=fold, center_writing_weights=fold, center_unembed=fold)
        model = load_model(ModelSpec(local=str(path), from_pretrained_kwargs=kwargs), "cpu").model
        assert fast_path_unsupported(model) is None
        with torch.no_grad():
            ours, ref = model(tokens), hf(tokens).logits
        torch.testing.assert_close(ours - ours.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True),
                                   atol=1e-4, rtol=0)
        for layer, hook in ((1, "blocks.1.hook_resid_pre"), (1, "blocks.1.hook_resid_post"),
                            (2, "blocks.2.hook_resid_post")):
            inputs = scan_inputs(model, layer, n_bases=2, n_ctx=N_CTX, steps=12)
            plain = scan_plain(model, layer, [2], *inputs, js=True, hook=hook)
            fast = scan_fast(model, layer, [2], *inputs, js=True, hook=hook)
            assert_agree(fast, plain, [2], js=True)


@pytest.mark.parametrize("flags", [{}, {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                                        "fold_value_biases": False}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_piecewise_processing_is_transformer_lens_processing(checkpoint, flags, dtype, monkeypatch):
    """The memory-lean loader (each block's attention in two pieces, its MLP in slices, the vocabulary in slices)
    gives the weights TransformerLens's whole-model `load_and_process_state_dict` gives, in float32 and in bf16
    (where both process in float32 and round once at the end)."""
    from transformer_lens import HookedTransformer

    from synthact.inputs import processing
    from synthact.inputs.checkpoint import converted

    family, path, _ = checkpoint
    processing_flags = {**PROCESSING_DEFAULTS, **flags}
    monkeypatch.setattr(processing, "SLICE_ELEMENTS", 7 * D)  # MLP slices of 7 hidden units, several per block
    ours = processing.assemble(*converted(path, processing_flags, dtype), vocab_slice=5)
    cfg, state, applied = converted(path, processing_flags, dtype)
    reference = HookedTransformer(cfg, move_to_device=False)
    reference.load_and_process_state_dict(state, **applied)
    theirs = dict(reference.named_parameters())
    assert set(dict(ours.named_parameters())) == set(theirs)
    for name, tensor in ours.named_parameters():
        assert tensor.dtype == theirs[name].dtype == dtype, name
        # bf16: one rounding of the tensor's scale (the unembedding is centred after its slices are rounded)
        tolerance = dict(atol=2e-6, rtol=1e-5) if dtype == torch.float32 else dict(
            atol=2**-8 * float(theirs[name].abs().max()), rtol=2**-8)
        torch.testing.assert_close(tensor, theirs[name], **tolerance, msg=f"{family}: {name}")


def test_a_blocks_attention_is_processed_over_its_converted_tensors_not_into_a_second_copy(checkpoint):
    """Each attention weight that owns its memory (a converter's view of one checkpoint tensor) is written over in
    place by the piecewise processing and becomes the model's parameter: no second copy of a block's attention."""
    from synthact.inputs import processing
    from synthact.inputs.checkpoint import converted

    family, path, _ = checkpoint
    cfg, state, applied = converted(path, PROCESSING_DEFAULTS, torch.float32)
    names = [k for k in state if k.startswith("blocks.0.attn.") and k.split(".")[-1].lstrip("_").startswith("W_")]
    own = {k: state[k].untyped_storage().data_ptr() for k in names if processing._owned(state[k], state)}
    model = processing.assemble(cfg, state, applied)
    params = dict(model.named_parameters())
    if family in ("llama", "gemma2", "mistral", "qwen2", "qwen3"):  # separate q/k/v/o projections
        assert len(own) == 4, names
    assert {k: params[k].untyped_storage().data_ptr() for k in own} == own


@pytest.mark.parametrize("where", ["pre", "post"])
def test_sweep_on_fast_path_recomputes_with_plain_path(checkpoint, where, tmp_path):
    family, path, _ = checkpoint
    model = load_model(ModelSpec(local=str(path)), "cpu")
    assert fast_path_unsupported(model.model) is None  # the worker's scan() takes the fast path
    layers = [1] if where == "pre" else [1, 2]  # resid_post of the last block: the final residual stream
    for layer in layers:
        save_sae(model.model, f"blocks.{layer}.hook_resid_{where}", tmp_path / f"sae-{layer}")
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, VOCAB, size=(64, 40)))
    job = parse_job(toy_job(
        name=f"{family}-{where}", model={"local": str(path)}, sae={"local": str(tmp_path / "sae-{layer}")},
        corpus={"file": str(tmp_path / "tokens.npy")}, layers=layers, read_layers=[-1],
        base_kinds=["real", "synthetic_baseline"], directions=["toward:same"], n_ctx=N_CTX,
        scan={"steps": 10, "step_size": 0.5}, js=True, bases_per_cell=3, shard_size=3,
        reference={"n_prompts": 64}, device="cpu", wandb=False,
    ))
    summary = run_local(job, Store(tmp_path / "out", job), progress=False)
    assert summary.ok
    df = read_table(tmp_path / "out").to_pandas()
    assert len(df) == len(layers) * 2 * 3
    worker = Worker(job, job.shards()[0].cell.group, str(tmp_path / "out" / "stats"))
    for _, row in df.iterrows():
        ctx = worker.context(int(row.layer))
        hook = worker.backend.saes[int(row.layer)].hook_name
        assert hook == f"blocks.{row.layer}.hook_resid_{where}"
        a = from_provenance(row.base_kind, row.base_tokens, row.base_latents, row.base_latent_values,
                            row.add_error, ctx, seed=row.base_seed)
        target = from_provenance(row.target_kind, row.target_tokens, row.target_latents, row.target_latent_values,
                                 row.add_error, ctx, seed=row.target_seed)
        d = direction_from_provenance(row.direction, a, ctx, target_vector=target, target_seed=row.target_seed)
        coeffs = torch.arange(int(row.steps) + 1, dtype=torch.float32)[None] * row.step_size
        tokens = torch.as_tensor(np.asarray(row.base_tokens, dtype=np.int64))[None]
        r = int(row.read_layer)
        result = scan_plain(ctx.model, int(row.layer), [r], tokens, a[None], d[None], coeffs, js=True, hook=hook)
        stored = np.asarray(row.l2_curve)
        assert stored.max() > 1e-3
        assert np.abs(result.l2[r][0].numpy() - stored).max() <= 1e-4 * stored.max(), (row.base_kind, row.layer)
        assert np.abs(result.js[0].numpy() - np.asarray(row.js_curve)).max() <= 1e-3


@pytest.mark.parametrize("checkpoint", ["llama"], indirect=True)
def test_what_cannot_be_served_is_named(checkpoint, tmp_path):
    """An SAE on another hook, and an architecture model.local does not load, each get a one-paragraph error."""
    from transformers import OPTConfig, OPTForCausalLM

    _, path, _ = checkpoint
    model = load_model(ModelSpec(local=str(path)), "cpu")
    mlp = save_sae(model.model, "blocks.1.hook_mlp_out", tmp_path / "mlp")
    with pytest.raises(SynthactError) as e:
        load_sae(SAESpec(local=mlp), 1, model, "cpu")
    msg = str(e.value)
    assert "blocks.1.hook_mlp_out" in msg and "blocks.1.hook_resid_post" in msg and "\n" not in msg
    OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                             word_embed_proj_dim=16)).save_pretrained(tmp_path / "opt")
    with pytest.raises(SynthactError) as e:
        load_model(ModelSpec(local=str(tmp_path / "opt")), "cpu")
    msg = str(e.value)
    assert "OPTForCausalLM" in msg and "LlamaForCausalLM" in msg and "Gemma2ForCausalLM" in msg and "\n" not in msg
