"""Model + SAE loading (pretrained, local directory, toy), compatibility checks, hub errors.

Pretrained path: the SAE comes first, because its config says how the model must be
loaded (`sae.cfg.metadata.model_from_pretrained_kwargs`); the job's own
`from_pretrained_kwargs` override those. Without the Hugging Face hub every loader fails
within seconds with a `SynthactError` that says how to point the spec at local copies.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from synthact.errors import SynthactError
from synthact.inputs.corpus import Corpus, load_corpus
from synthact.inputs.hooks import resid_post, resid_pre
from synthact.inputs.hub import hub_error, require_hub
from synthact.inputs.toy import load_toy_model, read_training_info, toy_model, toy_sae
from synthact.spec import CorpusSpec, ModelSpec, SAESpec
from synthact.spec.layers import check_layer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from sae_lens import SAE
    from sae_lens.constants import SPARSITY_FILENAME
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

# Weight processing HookedTransformer.from_pretrained applies, with its defaults.
PROCESSING_DEFAULTS = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}
LOCAL_MODEL_HINT = "model: {local: DIR} (a Hugging Face checkpoint directory from save_pretrained)"
# Architectures model.local loads: those TransformerLens converts that synthact tests (see docs/families.md).
NAMED_ARCHITECTURES = {"GPT2LMHeadModel", "GemmaForCausalLM", "Gemma2ForCausalLM"}
LOCAL_ARCHITECTURES = NAMED_ARCHITECTURES | {
    "GPTNeoXForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
}
LOCAL_SAE_HINT = "sae: {local: DIR} (an sae_lens directory from save_model; DIR may contain '{layer}')"


@dataclass
class LoadedModel:
    model: HookedTransformer
    label: str
    path: Path | None
    n_layers: int
    d_model: int
    d_vocab: int


@dataclass
class LoadedSAE:
    sae: SAE
    label: str
    path: Path | None
    layer: int
    hook_name: str
    d_sae: int
    info: dict = field(default_factory=dict)  # e.g. toy training L0 / explained variance / MSE
    log_sparsity: torch.Tensor | None = None  # the release's log10 feature density, where sae_lens ships it


@dataclass
class Backend:
    model: LoadedModel
    saes: dict[int, LoadedSAE]
    corpus: Corpus


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' if available, else 'cpu'; a CUDA device that is absent is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SynthactError(f"device '{device}' was asked for, but CUDA is not available here; use device: auto or cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise SynthactError(
            f"device '{device}' was asked for, but this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); use device: cuda or auto"
        )
    return device


# --------------------------------------------------------------------------- backend


def load_backend(
    model_spec: ModelSpec,
    sae_spec: SAESpec,
    corpus_spec: CorpusSpec,
    layers: list[int],
    device: str,
    n_ctx: int = 2,
) -> Backend:
    """Model, one SAE per layer, and the corpus, checked against each other.

    `n_ctx` is the prompt length the corpus documents must fit (pass the job's n_ctx).
    """
    if not layers:
        raise SynthactError("load_backend needs at least one layer")
    device = resolve_device(device)
    first = None
    sae_kwargs: dict = {}
    if not sae_spec.toy:  # the SAE's config says how to load the model
        first = _fetch_sae(sae_spec, layers[0], device)
        sae_kwargs = dict(first[0].cfg.metadata.model_from_pretrained_kwargs or {})
    model = load_model(model_spec, device, sae_kwargs, corpus_spec)
    corpus = load_corpus(corpus_spec, model.d_vocab, n_ctx)
    saes = {}
    for layer in layers:
        if first is not None and layer == layers[0]:
            saes[layer] = _checked(sae_spec, layer, model, *first)
        else:
            saes[layer] = load_sae(sae_spec, layer, model, device, corpus)
    return Backend(model=model, saes=saes, corpus=corpus)


# --------------------------------------------------------------------------- model


def load_model(
    spec: ModelSpec, device: str, sae_model_kwargs: dict | None = None, corpus_spec: CorpusSpec | None = None
) -> LoadedModel:
    """A HookedTransformer in eval mode on `device`.

    Weight processing: the SAE's `model_from_pretrained_kwargs` overridden by the spec's
    `from_pretrained_kwargs`. Pretrained and local models start from from_pretrained's
    defaults (fold_ln, center_writing_weights, center_unembed, fold_value_biases); the toy
    model starts unprocessed, exactly as trained.
    """
    device = resolve_device(device)
    kwargs = {**(sae_model_kwargs or {}), **spec.from_pretrained_kwargs}
    if spec.toy:
        corpus_toy = corpus_spec.toy if corpus_spec is not None else None
        model, path = toy_model(spec.toy, corpus_toy)
        if kwargs:
            state = model.state_dict()
            model.load_and_process_state_dict(state, **_processing(kwargs, spec.label, all_false=True))
    elif spec.local:
        path = Path(spec.local).expanduser()
        model = _local_model(path, kwargs)
    else:
        path = None
        model = _pretrained_model(spec.pretrained, kwargs, device)
    model.to(device, print_details=False).eval()
    cfg = model.cfg
    return LoadedModel(model=model, label=spec.label, path=path, n_layers=cfg.n_layers, d_model=cfg.d_model, d_vocab=cfg.d_vocab)


def _processing(kwargs: dict, label: str, all_false: bool = False) -> dict:
    """from_pretrained-style weight-processing flags, with unknown keys refused."""
    unknown = sorted(set(kwargs) - set(PROCESSING_DEFAULTS))
    if unknown:
        raise SynthactError(
            f"model '{label}' is not loaded through from_pretrained, so only the weight-processing kwargs "
            f"{', '.join(PROCESSING_DEFAULTS)} apply; remove {', '.join(unknown)} from from_pretrained_kwargs"
        )
    base = dict.fromkeys(PROCESSING_DEFAULTS, False) if all_false else dict(PROCESSING_DEFAULTS)
    return {**base, **kwargs}


def _pretrained_model(name: str, kwargs: dict, device: str) -> HookedTransformer:
    what = f"model '{name}'"
    require_hub(what, LOCAL_MODEL_HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer.from_pretrained(name, device=device, **kwargs)
    except TypeError as e:
        raise SynthactError(f"from_pretrained_kwargs for {what} are not accepted: {e}") from None
    except Exception as e:  # hub, cache and name errors come in many types
        raise hub_error(what, LOCAL_MODEL_HINT, e) from None


def _local_model(path: Path, kwargs: dict) -> HookedTransformer:
    """A Hugging Face checkpoint directory -> HookedTransformer through TransformerLens's own conversion.

    The config comes from TransformerLens's `convert_hf_model_config`, except for GPT-2 (whose mapping
    there ignores n_inner) and Gemma/Gemma-2 (mapped there by model name only): `_named_config`. The
    weights come from TransformerLens's per-architecture converters; processing is from_pretrained's
    (fold_ln etc., with its exceptions for post-norm models and logit soft caps).
    """
    if not (path / "config.json").is_file():
        raise SynthactError(
            f"local model directory '{path}' has no config.json; point model.local at a directory written by "
            "transformers' save_pretrained (config.json + model.safetensors)"
        )
    from transformers import AutoConfig, AutoModelForCausalLM
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
    processing = _processing(kwargs, f"local:{path}")
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report and progress bar would print beside our own output
    hf_logging.disable_progress_bar()
    try:
        hf, loading_info = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except OSError as e:
        raise SynthactError(f"could not read the weights in local model directory '{path}': {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    _check_complete(path, arch, loading_info)
    cfg_dict = _named_config(hf_cfg, arch) if arch in NAMED_ARCHITECTURES else _converted_config(path)
    cfg_dict.update(
        model_name=path.name, original_architecture=arch, tokenizer_name=None, init_weights=False, device="cpu",
        d_vocab=hf_cfg.vocab_size,
    )
    cfg_dict.setdefault("default_prepend_bos", True)
    if arch in POST_NORM_ARCHITECTURES:  # as from_pretrained: folding assumes pre-norm blocks
        processing.update(fold_ln=False, center_writing_weights=False)
    if cfg_dict.get("output_logits_soft_cap", 0) > 0:  # as from_pretrained: soft caps are not shift-invariant
        processing["center_unembed"] = False
    if processing["fold_ln"]:
        pre = {"LN": "LNPre", "RMS": "RMSPre"}
        cfg_dict["normalization_type"] = pre.get(cfg_dict["normalization_type"], cfg_dict["normalization_type"])
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    with torch.no_grad():
        state = loading.get_pretrained_state_dict(str(path), cfg, hf)
        state = {k: v.detach().clone() for k, v in state.items()}
    model.load_and_process_state_dict(state, **processing)
    return model


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


# --------------------------------------------------------------------------- SAE


def load_sae(spec: SAESpec, layer: int, model: LoadedModel, device: str, corpus: Corpus | None = None) -> LoadedSAE:
    """The SAE for layer `layer` (its hook_resid_pre or hook_resid_post), checked against the model.

    A toy SAE is trained (once, then cached) on the toy model over `corpus`.
    """
    device = resolve_device(device)
    check_layer(layer, model.n_layers, model.label)
    if spec.toy:
        if model.path is None or not model.label.startswith("toy"):
            raise SynthactError(
                f"a toy SAE is trained on the toy model, but the model is '{model.label}'; use model: {{toy: ...}} "
                f"with sae: {{toy: ...}}, or give a pretrained or local SAE for this model ({LOCAL_SAE_HINT})"
            )
        if corpus is None:
            raise SynthactError("training a toy SAE needs the corpus; pass corpus= to load_sae")
        sae, path = toy_sae(spec.toy, load_toy_model(model.path), model.path, layer, corpus.docs)
        fetched = (sae.to(device), path, read_training_info(path))
    else:
        fetched = _fetch_sae(spec, layer, device)
    return _checked(spec, layer, model, *fetched)


def _fetch_sae(spec: SAESpec, layer: int, device: str) -> tuple[SAE, Path | None, dict]:
    """A release or local SAE for `layer`: (sae, path or None, info)."""
    if spec.local:
        path = Path(spec.local.format(layer=layer)).expanduser()
        if not (path / "cfg.json").is_file():
            raise SynthactError(
                f"local SAE directory '{path}' (layer {layer}) has no cfg.json; point sae.local at a directory "
                "written by sae_lens's save_model (cfg.json + sae_weights.safetensors), with '{layer}' where the "
                "layer number goes"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # advice about model_from_pretrained_kwargs
                sae = SAE.load_from_disk(path, device=device)
        except Exception as e:
            raise SynthactError(f"could not load the sae_lens SAE in '{path}': {type(e).__name__}: {e}") from None
        return sae, path, read_training_info(path) | _local_sparsity(path, sae.cfg.d_sae, device)
    sae_id = spec.id.format(layer=layer)
    what = f"SAE '{sae_id}' of release '{spec.release}'"
    require_hub(what, LOCAL_SAE_HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sae, _, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(spec.release, sae_id, device=device)
            return sae, None, {"log_sparsity": log_sparsity}
    except Exception as e:  # hub, cache, unknown release/id errors come in many types
        raise hub_error(what, LOCAL_SAE_HINT, e) from None


def _local_sparsity(path: Path, d_sae: int, device: str) -> dict:
    """The release's log10 feature sparsity where a local SAE directory keeps it beside the weights
    (`sparsity.safetensors`, as sae_lens's hub releases and training runners write it), else nothing."""
    file = path / SPARSITY_FILENAME
    if not file.is_file():
        return {}
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            log_sparsity = f.get_tensor("sparsity")
    except Exception as e:
        raise SynthactError(f"could not read the feature sparsity in '{file}': {type(e).__name__}: {e}; "
                            "remove the file to estimate frequencies from the reference pool instead") from None
    if tuple(log_sparsity.shape) != (d_sae,):
        raise SynthactError(f"'{file}' holds {tuple(log_sparsity.shape)} sparsities, but the SAE in '{path}' has "
                            f"d_sae={d_sae}; it belongs to another SAE: remove it or put the right one there")
    return {"log_sparsity": log_sparsity, "sparsity_file": str(file)}


def _checked(spec: SAESpec, layer: int, model: LoadedModel, sae: SAE, path: Path | None, info: dict) -> LoadedSAE:
    """Refuse an SAE that does not read the residual stream of block `layer` of a d_model-wide model."""
    check_layer(layer, model.n_layers, model.label)
    where = f"SAE '{spec.label}'" + (f" at '{path}'" if path else "") + f" for layer {layer}"
    got = sae.cfg.metadata.hook_name
    if got not in (resid_pre(layer), resid_post(layer)):
        raise SynthactError(
            f"{where} was trained on hook '{got}', but synthact perturbs the residual stream at layer {layer}: "
            f"{resid_pre(layer)} or {resid_post(layer)}. Give an SAE trained on one of those (for a release, "
            "set sae.id so that it names that layer's SAE, with '{layer}' where the layer number goes)"
        )
    if sae.cfg.d_in != model.d_model:
        raise SynthactError(
            f"{where} reads vectors of width d_in={sae.cfg.d_in}, but model '{model.label}' has d_model="
            f"{model.d_model}; use an SAE trained on this model"
        )
    info = dict(info)
    log_sparsity = info.pop("log_sparsity", None)  # a tensor: kept beside the JSON-able info
    return LoadedSAE(
        sae=sae.eval(),
        label=spec.label,
        path=path,
        layer=layer,
        hook_name=got,
        d_sae=sae.cfg.d_sae,
        info=info,
        log_sparsity=log_sparsity,
    )
