"""SAEs: a release, local or toy SAE for one layer, in one canonical form for every architecture, checked against
the model; the release's feature sparsity, checked.

Architectures (sae_lens's `SAE` subclasses) synthact serves: standard (ReLU), JumpReLU (Gemma Scope, Llama Scope
as sae_lens loads it, BatchTopK SAEs as sae_lens saves them), TopK (OpenAI-style) and gated. synthact encodes
only through `sae.encode`, so a latent is active exactly when the architecture says so (a JumpReLU latent when
its pre-activation passes its threshold, a TopK latent when it is among the k largest), and decodes codes as
`z @ W_dec + b_dec`. A TopK SAE that rescales its activations by the decoder norms
(`rescale_acts_by_decoder_norm`) is brought to that form on load by sae_lens's own `fold_W_dec_norm`: the same
function, with unit decoder rows and each latent's values multiplied by its decoder norm.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from synthact.errors import SynthactError
from synthact.inputs.checkpoint import first_non_finite
from synthact.inputs.hooks import resid_post, resid_pre
from synthact.inputs.hub import hub_error, require_hub
from synthact.inputs.toy import load_toy_model, read_training_info, toy_sae
from synthact.spec import SAESpec
from synthact.spec.layers import check_layer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from sae_lens import SAE
    from sae_lens.constants import SPARSITY_FILENAME

LOCAL_SAE_HINT = "sae: {local: DIR} (an sae_lens directory from save_model; DIR may contain '{layer}')"
# sae_lens architectures whose encode is a per-activation sparse code and whose decode is affine (see above).
ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")


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

    @property
    def architecture(self) -> str:
        return self.sae.cfg.architecture()


def load_sae(spec: SAESpec, layer: int, model, device: str, corpus=None) -> LoadedSAE:
    """The SAE for layer `layer` (its hook_resid_pre or hook_resid_post), checked against `model` (a
    `backends.LoadedModel`). A toy SAE is trained (once, then cached) on the toy model over `corpus`."""
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
        fetched = fetch_sae(spec, layer, device)
    return checked_sae(spec, layer, model, *fetched)


def fetch_sae(spec: SAESpec, layer: int, device: str) -> tuple[SAE, Path | None, dict]:
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
    except Exception as e:  # hub, cache, unknown release/id errors come in many types
        raise hub_error(what, LOCAL_SAE_HINT, e) from None
    if log_sparsity is not None:
        check_log_sparsity(log_sparsity, sae.cfg.d_sae, f"the feature sparsity of {what}", "")
    return sae, None, {"log_sparsity": log_sparsity}


def _local_sparsity(path: Path, d_sae: int, device: str) -> dict:
    """The release's log10 feature sparsity where a local SAE directory keeps it beside the weights
    (`sparsity.safetensors`, as sae_lens's hub releases and training runners write it), else nothing."""
    file = path / SPARSITY_FILENAME
    if not file.is_file():
        return {}
    fix = "; remove the file to estimate frequencies from the reference pool instead, or put the right one there"
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            log_sparsity = f.get_tensor("sparsity")
    except Exception as e:
        raise SynthactError(f"could not read the feature sparsity in '{file}': {type(e).__name__}: {e}{fix}") from None
    check_log_sparsity(log_sparsity, d_sae, f"'{file}'", fix)
    return {"log_sparsity": log_sparsity, "sparsity_file": str(file)}


def check_log_sparsity(log_sparsity: torch.Tensor, d_sae: int, what: str, fix: str) -> None:
    """Refuse log10 feature densities that cannot be one: another SAE's (wrong length), NaN, +inf, or above 0
    (a density above 1). -inf is a latent that never fired (dead)."""
    if tuple(log_sparsity.shape) != (d_sae,):
        raise SynthactError(f"{what} holds {tuple(log_sparsity.shape)} sparsities, but the SAE has d_sae={d_sae}; "
                            f"it belongs to another SAE{fix}")
    values = log_sparsity.detach().double()
    problems = [f"{n} {name}" for n, name in ((int(torch.isnan(values).sum()), "NaN"),
                                              (int((values == math.inf).sum()), "+inf"),
                                              (int(((values > 0) & torch.isfinite(values)).sum()), "positive"))
                if n]
    if problems:
        raise SynthactError(
            f"{what} holds {', '.join(problems)} values of {d_sae}, but it must hold each latent's log10 firing "
            f"density: a number <= 0, or -inf for a latent that never fired; it is damaged or not a sparsity "
            f"file{fix}"
        )


def canonical_sae(sae: SAE, where: str) -> SAE:
    """The SAE in synthact's form (module docstring), or a one-paragraph refusal of an architecture it does not serve."""
    arch = sae.cfg.architecture()
    if arch not in ARCHITECTURES:
        raise SynthactError(
            f"{where} is a '{arch}' SAE; synthact serves the sae_lens architectures {', '.join(ARCHITECTURES)} "
            "(BatchTopK and Matryoshka BatchTopK SAEs load as jumprelu), whose codes are a per-activation sparse "
            "code decoded as z @ W_dec + b_dec; use an SAE of one of those"
        )
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        with torch.no_grad():
            sae.fold_W_dec_norm()
        sae.cfg.rescale_acts_by_decoder_norm = False
    return sae


def check_sae_finite(sae: SAE, where: str) -> None:
    """Refuse an SAE with a NaN or infinite weight (it would surface later as a scan 'overflow')."""
    found = first_non_finite(sae.named_parameters())
    if found:
        name, bad, row = found
        raise SynthactError(
            f"{where} has {bad} NaN or infinite values in {name} (first in row {row}); "
            "the SAE's weights are damaged: point the spec at an intact SAE"
        )


def checked_sae(spec: SAESpec, layer: int, model, sae: SAE, path: Path | None, info: dict) -> LoadedSAE:
    """Refuse an SAE that does not read the residual stream of block `layer` of a d_model-wide model, has a
    non-finite weight or an architecture synthact does not serve; bring it to synthact's canonical form."""
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
    check_sae_finite(sae, f"SAE '{spec.label}' (layer {layer})")
    sae = canonical_sae(sae, where)
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
