"""A local Hugging Face checkpoint directory -> a HookedTransformer, in the precision asked for, lean on memory;
and the check that a loaded module's weights are finite.

The config comes from TransformerLens's `convert_hf_model_config`, except for GPT-2 (whose mapping there ignores
n_inner) and Gemma/Gemma-2 (mapped there by model name only): `_named_config`. The weights come from
TransformerLens's per-architecture converters; processing is from_pretrained's (fold_ln etc., with its exceptions
for post-norm models and logit soft caps), applied piece by piece (`inputs/processing.py`).

Memory: a safetensors checkpoint is read tensor by tensor into memory of its own (no memory map, whose pages
would count as a second copy while the processed weights are built), in the asked dtype (bf16/fp16 directly,
never fp32 then cast), into a `transformers` model skeleton built without memory; the converted tensors are
processed block by block and become the HookedTransformer's parameters, so the peak is about one copy of the
weights (docs/benchmarks.md, "Model memory"). Any other checkpoint (pickled, or with keys `transformers` would
rename) is read by `transformers` itself.
"""

from __future__ import annotations

import contextlib
import gc
import json
import tempfile
import warnings
from pathlib import Path

import torch

from synthact.errors import SynthactError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

# Architectures model.local loads: those TransformerLens converts that synthact tests (see docs/families.md).
NAMED_ARCHITECTURES = {"GPT2LMHeadModel", "GemmaForCausalLM", "Gemma2ForCausalLM"}
LOCAL_ARCHITECTURES = NAMED_ARCHITECTURES | {
    "GPTNeoXForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
}
FINITE_CHECK_ELEMENTS = 2**24  # elements checked at once: bounds the check's own memory to 16 MB of booleans
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def local_model(path: Path, processing: dict, dtype: torch.dtype, label: str) -> HookedTransformer:
    """The HookedTransformer of the checkpoint in `path`, its weights in `dtype` and checked finite, processed with
    `processing` (from_pretrained's flags: fold_ln, center_writing_weights, center_unembed, ...), on the CPU."""
    from synthact.inputs.processing import assemble

    cfg, state, processing = converted(path, processing, dtype)
    check_model_finite(state.items(), label)
    return assemble(cfg, state, processing)


def converted(path: Path, processing: dict, dtype: torch.dtype) -> tuple[HookedTransformerConfig, dict, dict]:
    """The checkpoint in `path` as TransformerLens's config, its converted (unprocessed) state dict in `dtype`,
    and the processing flags that apply to it."""
    if not (path / "config.json").is_file():
        raise SynthactError(
            f"local model directory '{path}' has no config.json; point model.local at a directory written by "
            "transformers' save_pretrained (config.json + model.safetensors)"
        )
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    hf_cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    # A config without `architectures` (written by hand or by an old transformers) names its model type only.
    arch = (getattr(hf_cfg, "architectures", None) or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(hf_cfg.model_type)])[0]
    if arch not in LOCAL_ARCHITECTURES:
        raise SynthactError(
            f"local model '{path}' is a '{hf_cfg.model_type}' model (architecture {arch}), which synthact cannot "
            f"load from a directory; model.local supports {', '.join(sorted(LOCAL_ARCHITECTURES))} "
            "checkpoints. For other models TransformerLens knows, use model: {pretrained: NAME} with the "
            "Hugging Face cache"
        )
    hf = _read_safetensors(path, hf_cfg, dtype) or _read_with_transformers(path, dtype)
    _check_complete(path, arch, hf.loading_info)
    cfg_dict = _named_config(hf_cfg, arch) if arch in NAMED_ARCHITECTURES else _converted_config(path)
    cfg_dict.update(
        model_name=path.name, original_architecture=arch, tokenizer_name=None, init_weights=False, device="cpu",
        d_vocab=hf_cfg.vocab_size, dtype=dtype,
    )
    cfg_dict.setdefault("default_prepend_bos", True)
    processing = dict(processing)
    if arch in POST_NORM_ARCHITECTURES:  # as from_pretrained: folding assumes pre-norm blocks
        processing.update(fold_ln=False, center_writing_weights=False)
    if cfg_dict.get("output_logits_soft_cap", 0) > 0:  # as from_pretrained: soft caps are not shift-invariant
        processing["center_unembed"] = False
    if processing["fold_ln"]:
        pre = {"LN": "LNPre", "RMS": "RMSPre"}
        cfg_dict["normalization_type"] = pre.get(cfg_dict["normalization_type"], cfg_dict["normalization_type"])
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    with torch.no_grad():
        state = loading.get_pretrained_state_dict(str(path), cfg, hf)  # mostly views of hf's tensors
    del hf
    gc.collect()  # transformers' modules hold each other in cycles: free them now, so a replaced tensor's memory goes
    return cfg, state, processing


def _read_safetensors(path: Path, hf_cfg, dtype: torch.dtype):
    """The `transformers` model of a safetensors checkpoint, its tensors read into memory of their own in `dtype`,
    with `loading_info` (missing, mismatched, unexpected keys) set; None when the checkpoint is not plain
    safetensors whose keys are the model's own (then `transformers` reads it)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        return None
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:  # validates the file; a damaged one raises SafetensorError
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    wanted = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    tied = {t: s for t, s in hf.all_tied_weights_keys.items() if t not in shapes and s in shapes}
    if set(shapes) - set(wanted) or set(wanted) - set(shapes) - set(tied) or any(
            shapes[k] != wanted[k] for k in shapes.keys() & wanted.keys()):
        return None  # renamed, missing or misshaped keys: transformers' own loader reads and reports them
    tensors = {}
    for file in files:
        tensors.update(_read_file(file, dtype))
    hf.load_state_dict(tensors, strict=False, assign=True)
    del tensors
    hf.tie_weights()
    hf.loading_info = {"missing_keys": [], "mismatched_keys": [], "unexpected_keys": []}
    return hf


def _read_file(file: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file read with plain reads (floating ones cast to `dtype` one at a time)."""
    out = {}
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, end = meta["data_offsets"]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(8 + n + begin)
            f.readinto(memoryview(raw.numpy()))
            tensor = raw.view(SAFETENSORS_DTYPES[meta["dtype"]]).reshape(meta["shape"])
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


def _read_with_transformers(path: Path, dtype: torch.dtype):
    """The checkpoint read by `transformers` (any format it reads; its memory map and key renames), with
    `loading_info`."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers():
            hf, info = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
            )
    except OSError as e:
        raise SynthactError(f"could not read the weights in local model directory '{path}': {e}") from None
    hf.loading_info = info
    return hf


@contextlib.contextmanager
def quiet_transformers():
    """Without transformers' load report and progress bars (they would print beside synthact's own output)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def first_non_finite(named) -> tuple[str, int, int] | None:
    """(parameter name, number of NaN/inf values, first row holding one) of the first parameter that is not all
    finite, else None. Its extremes tell (NaN and inf propagate into them), in slices, so the check is one fast
    pass that allocates little beside the weights; only a damaged tensor is counted element by element."""
    for name, tensor in named:
        rows = tensor.detach().reshape(tensor.shape[0], -1) if tensor.dim() else tensor.detach().reshape(1, 1)
        if not rows.is_floating_point() or rows.numel() == 0:
            continue
        step = max(1, FINITE_CHECK_ELEMENTS // max(rows.shape[1], 1))
        bad, first = 0, None
        for start in range(0, rows.shape[0], step):
            chunk = rows[start : start + step]
            low, high = torch.aminmax(chunk)
            if bool(torch.isfinite(low) & torch.isfinite(high)):
                continue
            finite = torch.isfinite(chunk)
            bad += int((~finite).sum())
            first = start + int(torch.nonzero(~finite.all(1))[0]) if first is None else first
        if bad:
            return name, bad, first
    return None


def check_model_finite(named, label: str) -> None:
    """Refuse a model with a NaN or infinite weight (`named`: (name, tensor) pairs, e.g. its converted state dict
    before processing spreads a NaN) before anything runs on it; it would surface much later as degenerate
    reference statistics or a scan 'overflow'."""
    found = first_non_finite(named)
    if found:
        name, bad, row = found
        raise SynthactError(
            f"model '{label}' has {bad} NaN or infinite values in {name} (first in row {row}); the model's weights "
            "are damaged: point the spec at an intact checkpoint"
        )


def _check_complete(path: Path, arch: str, info: dict) -> None:
    """Refuse a checkpoint whose tensors do not fill the model exactly: transformers would give any missing
    or wrongly shaped tensor random weights, and drop unexpected ones, without a word."""
    def listed(names) -> str:
        names = sorted(names)
        return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    problems = []
    if info["missing_keys"]:
        problems.append(f"missing {listed(info['missing_keys'])}")
    if info["mismatched_keys"]:
        problems.append("wrongly shaped " + listed(f"{name} ({tuple(got)} in the file, {tuple(want)} expected)"
                                                   for name, got, want in info["mismatched_keys"]))
    if info["unexpected_keys"]:
        problems.append(f"unexpected {listed(info['unexpected_keys'])}")
    if problems:
        raise SynthactError(
            f"the weights in local model directory '{path}' do not match its config.json ({arch}): "
            f"{'; '.join(problems)}. The model would run with random weights in their place; point model.local at "
            "a complete checkpoint written by save_pretrained for this config"
        )


def _converted_config(path: Path) -> dict:
    """TransformerLens's config for a local HF directory.

    TransformerLens picks some architectures by substrings of the name ('llama', 'gemma'), so it is
    handed the directory through a neutrally named link.
    """
    with tempfile.TemporaryDirectory(prefix="synthact-") as tmp:
        link = Path(tmp) / "checkpoint"
        link.symlink_to(path.resolve(), target_is_directory=True)
        return loading.convert_hf_model_config(str(link))


def _named_config(hf_cfg, arch: str) -> dict:
    """The config TransformerLens uses for its named GPT-2 and Gemma/Gemma-2 models, read from an HF config."""
    if arch == "GPT2LMHeadModel":  # TransformerLens's own mapping ignores n_inner
        return dict(
            d_model=hf_cfg.n_embd, d_head=hf_cfg.n_embd // hf_cfg.n_head, n_heads=hf_cfg.n_head,
            d_mlp=hf_cfg.n_inner or 4 * hf_cfg.n_embd, n_layers=hf_cfg.n_layer, n_ctx=hf_cfg.n_positions,
            eps=hf_cfg.layer_norm_epsilon, act_fn=hf_cfg.activation_function, use_attn_scale=hf_cfg.scale_attn_weights,
            scale_attn_by_inverse_layer_idx=hf_cfg.scale_attn_by_inverse_layer_idx, normalization_type="LN",
            positional_embedding_type="standard",
        )
    d_head = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    cfg = dict(
        d_model=hf_cfg.hidden_size, d_head=d_head, n_heads=hf_cfg.num_attention_heads, d_mlp=hf_cfg.intermediate_size,
        n_layers=hf_cfg.num_hidden_layers, n_ctx=hf_cfg.max_position_embeddings, eps=hf_cfg.rms_norm_eps,
        act_fn=getattr(hf_cfg, "hidden_activation", None) or hf_cfg.hidden_act, normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=d_head, rotary_base=loading._get_rope_theta(hf_cfg),
        use_attn_scale=True, n_key_value_heads=hf_cfg.num_key_value_heads, gated_mlp=True, final_rms=True,
    )
    if arch == "Gemma2ForCausalLM":
        layer_types = getattr(hf_cfg, "layer_types", None) or ["sliding_attention", "full_attention"] * (
            (hf_cfg.num_hidden_layers + 1) // 2
        )
        cfg.update(
            attn_scale=float(hf_cfg.query_pre_attn_scalar) ** 0.5,
            window_size=hf_cfg.sliding_window,
            use_local_attn=True,
            attn_types=["local" if t == "sliding_attention" else "global" for t in layer_types][: hf_cfg.num_hidden_layers],
            attn_scores_soft_cap=hf_cfg.attn_logit_softcapping or -1.0,
            output_logits_soft_cap=hf_cfg.final_logit_softcapping or -1.0,
            use_normalization_before_and_after=True,
        )
    return cfg
