"""Model + SAE loading (pretrained, local directory, toy): the worker's backend, checked as a whole.

Pretrained path: the SAE comes first, because its config says how the model must be
loaded (`sae.cfg.metadata.model_from_pretrained_kwargs`); the job's own
`from_pretrained_kwargs` override those. Without the Hugging Face hub every loader fails
within seconds with a `SynthactError` that says how to point the spec at local copies.
Local checkpoints load through `inputs/checkpoint.py`, SAEs through `inputs/saes.py`.

Precision: `from_pretrained_kwargs: {dtype: bfloat16}` (or float16; TransformerLens's own `dtype` argument) loads
the model's weights in that precision directly, for every source; the default is float32. The job's `dtype`
is the scan's compute precision (the fast path reads the weights as they are, see `scan/weights.py`).
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from synthact.errors import SynthactError
from synthact.inputs.checkpoint import check_model_finite, local_model, quiet_transformers
from synthact.inputs.corpus import Corpus, load_corpus
from synthact.inputs.hub import hub_error, require_hub
from synthact.inputs.saes import LOCAL_SAE_HINT, LoadedSAE, checked_sae, fetch_sae, load_sae
from synthact.inputs.toy import toy_model
from synthact.spec import CorpusSpec, ModelSpec, SAESpec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer

__all__ = ["LOCAL_SAE_HINT", "Backend", "LoadedModel", "LoadedSAE", "load_backend", "load_model", "load_sae",
           "resolve_device"]

# Weight processing HookedTransformer.from_pretrained applies, with its defaults.
PROCESSING_DEFAULTS = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# from_pretrained kwargs that shape the config (passed to TransformerLens's get_pretrained_model_config).
CONFIG_KWARGS = {"dtype", "n_ctx", "first_n_layers", "default_prepend_bos", "checkpoint_index", "checkpoint_value"}
LOCAL_MODEL_HINT = "model: {local: DIR} (a Hugging Face checkpoint directory from save_pretrained)"


@dataclass
class LoadedModel:
    model: HookedTransformer
    label: str
    path: Path | None
    n_layers: int
    d_model: int
    d_vocab: int


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
        first = fetch_sae(sae_spec, layers[0], device)
        sae_kwargs = dict(first[0].cfg.metadata.model_from_pretrained_kwargs or {})
    model = load_model(model_spec, device, sae_kwargs, corpus_spec)
    corpus = load_corpus(corpus_spec, model.d_vocab, n_ctx)
    saes = {}
    for layer in layers:
        if first is not None and layer == layers[0]:
            saes[layer] = checked_sae(sae_spec, layer, model, *first)
        else:
            saes[layer] = load_sae(sae_spec, layer, model, device, corpus)
    return Backend(model=model, saes=saes, corpus=corpus)


# --------------------------------------------------------------------------- model


def load_model(
    spec: ModelSpec, device: str, sae_model_kwargs: dict | None = None, corpus_spec: CorpusSpec | None = None
) -> LoadedModel:
    """A HookedTransformer in eval mode on `device`, its weights checked finite (before processing, which would
    spread a NaN over a row or column).

    Weight processing: the SAE's `model_from_pretrained_kwargs` overridden by the spec's
    `from_pretrained_kwargs`. Pretrained and local models start from from_pretrained's
    defaults (fold_ln, center_writing_weights, center_unembed, fold_value_biases); the toy
    model starts unprocessed, exactly as trained. `dtype` there is the weights' precision.
    """
    device = resolve_device(device)
    kwargs = {**(sae_model_kwargs or {}), **spec.from_pretrained_kwargs}
    dtype = _model_dtype(kwargs.pop("dtype", "float32"), spec.label)
    if spec.toy:
        corpus_toy = corpus_spec.toy if corpus_spec is not None else None
        model, path = toy_model(spec.toy, corpus_toy)
        if kwargs:
            state = model.state_dict()
            model.load_and_process_state_dict(state, **_processing(kwargs, spec.label, all_false=True))
        model.to(dtype)
        check_model_finite(model.named_parameters(), spec.label)
    elif spec.local:
        path = Path(spec.local).expanduser()
        model = local_model(path, _processing(kwargs, f"local:{path}"), dtype, spec.label)
    else:
        path = None
        model = _pretrained_model(spec.pretrained, {**kwargs, "dtype": dtype}, device)
    model.to(device, print_details=False).eval()
    cfg = model.cfg
    return LoadedModel(model=model, label=spec.label, path=path, n_layers=cfg.n_layers, d_model=cfg.d_model, d_vocab=cfg.d_vocab)


def _model_dtype(name, label: str) -> torch.dtype:
    """The weights' precision from from_pretrained_kwargs' `dtype` (a name)."""
    if isinstance(name, str) and name.removeprefix("torch.") in MODEL_DTYPES:
        return MODEL_DTYPES[name.removeprefix("torch.")]
    raise SynthactError(f"model '{label}': from_pretrained_kwargs dtype '{name}' is not one of "
                        f"{', '.join(MODEL_DTYPES)}; set it to the precision the model's weights should load in")


def _processing(kwargs: dict, label: str, all_false: bool = False) -> dict:
    """from_pretrained-style weight-processing flags, with unknown keys refused."""
    unknown = sorted(set(kwargs) - set(PROCESSING_DEFAULTS))
    if unknown:
        raise SynthactError(
            f"model '{label}' is not loaded through from_pretrained, so only dtype and the weight-processing kwargs "
            f"{', '.join(PROCESSING_DEFAULTS)} apply; remove {', '.join(unknown)} from from_pretrained_kwargs"
        )
    base = dict.fromkeys(PROCESSING_DEFAULTS, False) if all_false else dict(PROCESSING_DEFAULTS)
    return {**base, **kwargs}


def _pretrained_model(name: str, kwargs: dict, device: str) -> HookedTransformer:
    """A TransformerLens model by name: its config and converted weights as `from_pretrained` gets them, processed
    piece by piece (`inputs/processing.py`: about one copy of the weights, where from_pretrained's processing holds
    float32 copies of the whole model), without a tokenizer (synthact feeds token ids). Keyword arguments beyond
    those are handed to `HookedTransformer.from_pretrained` itself."""
    what = f"model '{name}'"
    require_hub(what, LOCAL_MODEL_HINT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if set(kwargs) - set(PROCESSING_DEFAULTS) - CONFIG_KWARGS:
                model = HookedTransformer.from_pretrained(name, device=device, **kwargs)
                check_model_finite(model.named_parameters(), name)
                return model
            return _pretrained_piecewise(name, kwargs)
    except SynthactError:
        raise
    except TypeError as e:
        raise SynthactError(f"from_pretrained_kwargs for {what} are not accepted: {e}") from None
    except Exception as e:  # hub, cache and name errors come in many types
        raise hub_error(what, LOCAL_MODEL_HINT, e) from None


def _pretrained_piecewise(name: str, kwargs: dict) -> HookedTransformer:
    """What `HookedTransformer.from_pretrained` does for a name, its processing done by `assemble`."""
    import dataclasses

    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    from synthact.inputs.processing import assemble

    flags = {**PROCESSING_DEFAULTS, **{k: v for k, v in kwargs.items() if k in PROCESSING_DEFAULTS}}
    config = {k: v for k, v in kwargs.items() if k in CONFIG_KWARGS}
    official = loading.get_official_model_name(name)
    cfg = loading.get_pretrained_model_config(official, fold_ln=flags["fold_ln"], device="cpu", **config)
    if cfg.positional_embedding_type == "shortformer":  # as from_pretrained: these cannot be folded or centred
        flags.update(fold_ln=False, center_writing_weights=False, center_unembed=False)
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        flags.update(fold_ln=False, center_writing_weights=False)
    if (cfg.output_logits_soft_cap or 0) > 0:
        flags["center_unembed"] = False
    with quiet_transformers():
        state = loading.get_pretrained_state_dict(official, cfg, None, dtype=config["dtype"])
    gc.collect()  # the transformers model it read, held in cycles: its replaced tensors are freed as processing goes
    check_model_finite(state.items(), name)
    return assemble(dataclasses.replace(cfg, tokenizer_name=None), state, flags)
