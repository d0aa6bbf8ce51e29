"""The kinds of activation at the SAE's hook, last position (docs/science.md, "Kinds").

`draw(kind, rngs, ctx, settings)` makes one activation per RNG. Base b consumes randomness
only from `rngs[b]`, in a fixed order, so a draw does not depend on which other bases share
the batch; the heavy work (model forward, SAE encode, frequency matching, decode) is batched.

Order of each base's random draws (what `from_provenance` and the tests rely on):
- real, sae_recon: the prompt.
- gaussian: eps ~ N(0, I) (d_model float64 normals) first, then a context prompt.
- single_latent: a context prompt, then the latent, then the pool code whose norm it takes.
- SAE-built from a template (synthetic_*, random_latents, the ladder's kinds): the template prompt (redrawn
  while its SAE code is empty; nothing when the template is the base), then the other prompt where there is
  one (control_other_latents, and add_error with error_source "other"; for control_other_latents further rounds
  of OTHER_ROUNDS prompts while its code has fewer latents than the template's), then the choice uniforms
  ([k, C] for structure pairwise and match tol, [k] otherwise), then the value uniforms [k].

Built codes: the template's latents i_1..i_k are taken in ascending id (the authors' order; largest
value first for match tol and structure pairwise); j_t replaces i_t (`latents[t]` pairs with
`template_latents[t]`); no j is used twice, no j_t is i_t and, with `exclude_template`, no j is any
template latent. With `match_norm` the built code's values are scaled by one factor so that the
activation (decoded, plus the SAE error with `add_error`) has the template's norm. The SAE error
x - decode(encode(x)) is the template's, or with error_source "other" the other prompt's (transplanted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthact.errors import SynthactError
from synthact.generation import codes, ladder
from synthact.generation.context import Activations, GenContext, GenerationSettings, method
from synthact.generation.matching import anchor, match_pairwise, nearest_k, random_latents
from synthact.generation.stats import check_affine_decoder
from synthact.inputs.hooks import real_activations, stream_index
from synthact.spec import CONTROL_KINDS, CONTROL_VALUE_SOURCES, KINDS, TEMPLATE_KINDS

VALUE_SOURCES = ("sampled", "template", "quantile", "permuted")
MAX_TEMPLATE_TRIES = 32  # prompts tried per base before an empty SAE code is an error
# control_other_latents: other prompts tried per base, by round, for a code at least as long as the template's
OTHER_ROUNDS = (1, 3, 28)  # the first round is the one prompt every draw takes
ERROR_SOURCES = ("template", "other")
# A choice over every latent (the anchor, the ladder's window "all") holds a few dense [rows, d_sae] float64: the
# rows of one choice are bounded so that CHOICE_COPIES such float32 rows fit in CHOICE_BUDGET_BYTES.
CHOICE_COPIES, CHOICE_BUDGET_BYTES = 4, 256 << 20


def draw(
    kind: str,
    rngs: list[np.random.Generator],
    ctx: GenContext,
    settings: GenerationSettings | None = None,
    template: Activations | None = None,
) -> Activations:
    """One activation of `kind` per RNG in `rngs`; template-built kinds take draw b's template from
    `template[b]` (the base: paired targets) when given, else from a real prompt drawn from `rngs[b]`."""
    if kind not in KINDS:
        raise SynthactError(f"unknown kind of activation '{kind}'; use one of {', '.join(KINDS)}")
    if not rngs:
        raise SynthactError("draw needs at least one RNG (one per base)")
    settings = settings or GenerationSettings()
    if kind in TEMPLATE_KINDS:
        _check_settings(kind, settings)
        return _draw_synthetic(kind, rngs, ctx, settings, template)
    return {
        "real": _draw_real,
        "sae_recon": _draw_sae_recon,
        "gaussian": _draw_gaussian,
        "single_latent": _draw_single_latent,
    }[kind](rngs, ctx)


def _check_settings(kind: str, s: GenerationSettings) -> None:
    if s.value_source not in VALUE_SOURCES:
        raise SynthactError(f"value_source '{s.value_source}' is unknown; use one of {', '.join(VALUE_SOURCES)}")
    if kind in CONTROL_KINDS and s.value_source not in CONTROL_VALUE_SOURCES:
        raise SynthactError(f"{kind} keeps the template's values, so value_source '{s.value_source}' does not apply "
                            f"to it; use {' or '.join(CONTROL_VALUE_SOURCES)}")
    if s.error_source not in ERROR_SOURCES:
        raise SynthactError(f"error_source '{s.error_source}' is unknown; use one of {', '.join(ERROR_SOURCES)}")
    if not (s.tol >= 0 and math.isfinite(s.tol)):
        raise SynthactError(f"tol {s.tol} must be a finite number >= 0 (a distance in log10 frequency)")
    windows = ("all", "nearest_k", "anchor")
    if s.cooccur not in ("counts", "none") or s.cooccur_window not in windows or s.swap_order not in (
            "most_cooccurring", "least_cooccurring"):
        raise SynthactError(f"cooccur '{s.cooccur}', cooccur_window '{s.cooccur_window}' or swap_order "
                            f"'{s.swap_order}' is unknown (see synthact validate --fields)")
    if min(s.candidates, s.nearest_k, s.anchor_pool) < 1:
        raise SynthactError(
            f"candidates {s.candidates}, nearest_k {s.nearest_k} and anchor_pool {s.anchor_pool} must be >= 1"
        )


# --------------------------------------------------------------------------- prompts


def _prompt(rng: np.random.Generator, ctx: GenContext) -> tuple[int, int, np.ndarray]:
    doc, offset, tokens = ctx.corpus.sample(rng, 1, ctx.n_ctx)
    return int(doc[0]), int(offset[0]), np.asarray(tokens[0], dtype=np.int64)


def _prompts(rngs: list[np.random.Generator], ctx: GenContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    drawn = [_prompt(rng, ctx) for rng in rngs]
    docs = np.array([d for d, _, _ in drawn], np.int64)
    offsets = np.array([o for _, o, _ in drawn], np.int64)
    return docs, offsets, np.stack([t for _, _, t in drawn])


def _forward(ctx: GenContext, tokens: np.ndarray) -> torch.Tensor:
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=ctx.device)
    return real_activations(ctx.model, tokens, stream_index(ctx.sae, ctx.layer))


def _encode(ctx: GenContext, x: torch.Tensor) -> codes.Codes:
    """The SAE codes of x [B, d_model], sparse (encoded in bounded batches)."""
    return codes.encode(ctx.sae, x)


def _l0(c: codes.Codes) -> np.ndarray:
    return c.l0.cpu().numpy().astype(np.int32)


# --------------------------------------------------------------------------- simple kinds


@torch.no_grad()
def _draw_real(rngs, ctx: GenContext) -> Activations:
    docs, offsets, tokens = _prompts(rngs, ctx)
    x = _forward(ctx, tokens)
    z = _encode(ctx, x)
    return Activations("real", x, docs, offsets, tokens, None, None, _l0(z), True, codes=z)


@torch.no_grad()
def _draw_sae_recon(rngs, ctx: GenContext) -> Activations:
    docs, offsets, tokens = _prompts(rngs, ctx)
    z = _encode(ctx, _forward(ctx, tokens))
    lat, val = z.lists()
    return Activations("sae_recon", codes.decode(ctx.sae, z), docs, offsets, tokens, lat, val, _l0(z), True)


def _gaussian(ctx: GenContext, eps: np.ndarray) -> torch.Tensor:
    stats = ctx.stats
    mean, chol = stats.mean.to(ctx.device), stats.chol.to(ctx.device)
    return (mean + torch.as_tensor(eps, device=ctx.device) @ chol.T).float()


@torch.no_grad()
def _draw_gaussian(rngs, ctx: GenContext) -> Activations:
    d_model = ctx.stats.mean.shape[0]
    eps = np.stack([rng.standard_normal(d_model) for rng in rngs])
    docs, offsets, tokens = _prompts(rngs, ctx)
    x = _gaussian(ctx, eps)
    z = _encode(ctx, x)
    return Activations("gaussian", x, docs, offsets, tokens, None, None, _l0(z), False, codes=z)


@torch.no_grad()
def _draw_single_latent(rngs, ctx: GenContext) -> Activations:
    check_affine_decoder(ctx.sae)
    stats = ctx.stats
    alive = stats.alive.cpu().numpy()
    code_norms = stats.code_norms.cpu().numpy()
    docs, offsets, tokens, ids, norms = [], [], [], [], []
    for rng in rngs:
        d, o, t = _prompt(rng, ctx)
        docs.append(d), offsets.append(o), tokens.append(t)
        ids.append(alive[rng.integers(alive.shape[0])])
        norms.append(code_norms[rng.integers(code_norms.shape[0])])
    ids_t = torch.as_tensor(np.array(ids), dtype=torch.long, device=ctx.device)
    w = ctx.sae.W_dec[ids_t].float()
    values = torch.as_tensor(np.array(norms), dtype=torch.float32, device=ctx.device) / w.norm(dim=-1)
    x = decode_sparse(ctx, ids_t[:, None], values[:, None])
    vals = values.cpu().numpy()
    return Activations(
        "single_latent", x, np.array(docs, np.int64), np.array(offsets, np.int64), np.stack(tokens),
        [np.array([j], np.int32) for j in ids], [np.array([v], np.float32) for v in vals],
        np.ones(len(rngs), np.int32), False,
    )


def decode_sparse(ctx: GenContext, latents: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_t values[b, t] * W_dec[latents[b, t]] + b_dec for padded [B, K] codes (pad with value 0)."""
    w = ctx.sae.W_dec[latents].float()
    return torch.einsum("bk,bkd->bd", values.float(), w) + ctx.sae.b_dec.float()


# --------------------------------------------------------------------------- synthetic kinds


@dataclass
class _Templates:
    docs: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray
    x: torch.Tensor  # real activations [B, d_model]
    z: codes.Codes  # their SAE codes, sparse


@torch.no_grad()
def _draw_templates(rngs, ctx: GenContext) -> _Templates:
    """Real template prompts with a non-empty SAE code; empty ones are redrawn from the same RNG."""
    docs, offsets, tokens = _prompts(rngs, ctx)
    x = _forward(ctx, tokens)
    z = _encode(ctx, x)
    for _ in range(MAX_TEMPLATE_TRIES):
        empty = np.flatnonzero(_l0(z) == 0)
        if empty.size == 0:
            return _Templates(docs, offsets, tokens, x, z)
        d, o, t = _prompts([rngs[i] for i in empty], ctx)
        docs[empty], offsets[empty], tokens[empty] = d, o, t
        idx = torch.as_tensor(empty, device=x.device)
        x[idx] = _forward(ctx, t)
        z = z.replace(idx.to(z.offsets.device), _encode(ctx, x[idx]))
    raise SynthactError(
        f"{MAX_TEMPLATE_TRIES} prompts in a row had an empty SAE code at layer {ctx.layer}, so there is no "
        "template for a synthetic activation; the SAE is almost never active on this corpus: check that the "
        "SAE belongs to this model and layer"
    )



@torch.no_grad()
def _draw_other(rngs, ctx: GenContext, lat: torch.Tensor | None, exclude_template: bool) -> _Templates:
    """Another real prompt per draw, with its activation and SAE code. With the template codes `lat` [B, K]
    (control_other_latents): the first prompt whose code has at least the template's L0 usable latents
    (ladder.other_codes), else the first with the most, among up to sum(OTHER_ROUNDS) prompts from the draw's
    RNG, drawn in OTHER_ROUNDS rounds (a draw short after a round draws the next round's prompts)."""
    docs, offsets, tokens = _prompts(rngs, ctx)
    x = _forward(ctx, tokens)
    other = _Templates(docs, offsets, tokens, x, _encode(ctx, x))
    if lat is None:
        return other
    need = (lat >= 0).sum(1)
    have = (ladder.other_codes(lat, other.z, exclude_template)[0] >= 0).sum(1)
    for size in OTHER_ROUNDS[1:]:
        short = np.flatnonzero((have < need).cpu().numpy())
        if short.size == 0:
            break
        d, o, t = _prompts([rngs[i] for i in short for _ in range(size)], ctx)
        x_new = _forward(ctx, t)
        z_new = _encode(ctx, x_new)
        idx = torch.as_tensor(short, device=x.device)
        counts = (ladder.other_codes(lat[idx].repeat_interleave(size, 0), z_new, exclude_template)[0] >= 0).sum(1)
        first = torch.minimum(counts.view(-1, size), need[idx, None]).argmax(1)  # first enough, else first most
        pick = torch.arange(short.size, device=x.device) * size + first
        better = (counts[pick] > have[idx]).cpu().numpy()
        rows, sel = short[better], pick[torch.as_tensor(better, device=x.device)]
        sel_np = sel.cpu().numpy()
        other.docs[rows], other.offsets[rows], other.tokens[rows] = d[sel_np], o[sel_np], t[sel_np]
        at = torch.as_tensor(rows, device=x.device)
        other.x[at], have[at] = x_new[sel], counts[sel]
        other.z = other.z.replace(at.to(other.z.offsets.device), z_new.select(sel.to(z_new.offsets.device)))
    return other


def _paired_templates(base: Activations, ctx: GenContext) -> _Templates:
    """The bases as templates: their vectors and SAE codes (an empty code gives an empty built code); the codes
    their own draw computed where it did, so the bases are encoded once whatever the number of paired kinds."""
    x = base.vectors.float()
    z = base.codes if base.codes is not None else _encode(ctx, x)
    return _Templates(base.docs.copy(), base.offsets.copy(), base.tokens.copy(), x, z)


@torch.no_grad()
def _draw_synthetic(kind: str, rngs, ctx: GenContext, settings: GenerationSettings, template) -> Activations:
    check_affine_decoder(ctx.sae)
    stats, device = ctx.stats, ctx.device
    how = method(kind, settings)
    c = settings.candidates if kind == "synthetic_structured" and how == "pairwise" else 1
    templ = _draw_templates(rngs, ctx) if template is None else _paired_templates(template, ctx)

    # The template codes: ascending id (the authors' order), or largest value first for the pairwise
    # search, which fixes the big latents first.
    tlat, tval = [], []
    for lat, val in zip(*templ.z.lists()):
        order = np.argsort(-val, kind="stable") if how == "pairwise" else np.arange(lat.shape[0])
        tlat.append(lat[order].astype(np.int64)), tval.append(val[order])
    k = np.array([t.shape[0] for t in tlat])
    b, kmax = len(rngs), int(k.max())
    lat = torch.full((b, kmax), -1, dtype=torch.long)
    tv = torch.zeros(b, kmax)
    for i in range(b):
        lat[i, : k[i]] = torch.from_numpy(tlat[i])
        tv[i, : k[i]] = torch.from_numpy(tval[i])
    lat, tv = lat.to(device), tv.to(device)
    mask = lat >= 0
    other = None
    if how == "control_other_latents" or (settings.add_error and settings.error_source == "other"):
        other = _draw_other(rngs, ctx, lat if how == "control_other_latents" else None, settings.exclude_template)

    u_cand = [rng.random((kb, c)) for rng, kb in zip(rngs, k)]
    u_val = [rng.random(kb) for rng, kb in zip(rngs, k)]
    uc = torch.zeros(b, kmax, c, dtype=torch.float64)
    uv = torch.zeros(b, kmax, dtype=torch.float64)
    for i in range(b):
        uc[i, : k[i]] = torch.from_numpy(u_cand[i])
        uv[i, : k[i]] = torch.from_numpy(u_val[i])
    uc, uv = uc.to(device), uv.to(device)

    if kmax == 0:
        chosen = lat.clamp(min=0)
    elif how == "control_other_latents":
        chosen, mask = ladder.other_latents(lat, tv, ladder.other_codes(lat, other.z, settings.exclude_template))
    elif how == "pairwise":
        chosen = match_pairwise(ctx, lat.clamp(min=0), k, uc, settings.tol, settings.exclude_template)
    else:
        pick = {"nearest_k": nearest_k, "random": random_latents, "anchor": anchor,
                "synthetic_cooccur": ladder.cooccur, "control_swapped": ladder.swapped}[how]
        step = codes.batch_rows(CHOICE_COPIES * ctx.sae.W_dec.shape[0], CHOICE_BUDGET_BYTES)
        chosen = torch.cat([pick(ctx, lat[i: i + step], tv[i: i + step], uc[i: i + step, :, 0], settings)
                            for i in range(0, b, step)])

    if settings.value_source == "template":
        values = tv
    elif settings.value_source == "permuted":
        values = ladder.permuted(tv, mask, uv)
    elif settings.value_source == "quantile":
        values = ladder.quantile_values(ctx, lat, tv, chosen, uv, settings)
    else:
        counts = stats.value_counts.to(device)[chosen]
        pick = torch.minimum((uv * counts).long(), (counts - 1).clamp(min=0))
        # A latent that never fired at the pool's last positions has no values: it keeps the template's.
        samples = torch.cat([stats.value_samples.to(device), tv.new_zeros(1)])  # the last entry: for those
        at = torch.where(counts > 0, stats.value_offsets.to(device)[chosen] + pick, samples.shape[0] - 1)
        values = torch.where(counts > 0, samples[at], tv)
    values = values * mask
    source = other if settings.error_source == "other" else templ
    error = source.x - codes.decode(ctx.sae, source.z) if settings.add_error else torch.zeros_like(templ.x)
    if settings.match_norm:
        code = torch.einsum("bk,bkd->bd", values, ctx.sae.W_dec[chosen].float())
        offset = ctx.sae.b_dec.float() + error
        values = values * _scale_to_norm(code, offset, templ.x.norm(dim=-1))[:, None]
    x = decode_sparse(ctx, chosen, values) + error

    chosen_np, values_np, kept = chosen.cpu().numpy(), values.float().cpu().numpy(), mask.cpu().numpy()
    return Activations(
        kind, x, templ.docs, templ.offsets, templ.tokens,
        [chosen_np[i, kept[i]].astype(np.int32) for i in range(b)],
        [values_np[i, kept[i]].astype(np.float32) for i in range(b)],
        kept.sum(1).astype(np.int32), True,
        template_latents=[t[kept[i, : k[i]]].astype(np.int32) for i, t in enumerate(tlat)],
        other_docs=other.docs if other is not None else None,
        other_offsets=other.offsets if other is not None else None,
        other_tokens=other.tokens if other is not None else None,
    )



def _scale_to_norm(code: torch.Tensor, offset: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """alpha >= 0 per row with ||alpha * code + offset|| = target (else the alpha that comes closest)."""
    a = (code * code).sum(-1).clamp(min=1e-12)
    half_b = (code * offset).sum(-1)
    c = (offset * offset).sum(-1) - target**2
    disc = half_b**2 - a * c
    root = (-half_b + disc.clamp(min=0).sqrt()) / a
    closest = (-half_b / a).clamp(min=0)
    return torch.where((disc >= 0) & (root >= 0), root, closest)


# --------------------------------------------------------------------------- provenance


@torch.no_grad()
def from_provenance(
    kind: str,
    tokens,
    latents,
    values,
    add_error: bool | None,
    ctx: GenContext,
    seed: int | None = None,
    error_source: str | None = None,
    other_tokens=None,
) -> torch.Tensor:
    """Rebuild one activation [d_model] from what a result row stores.

    real / sae_recon: from `tokens`; gaussian: from the draw `seed` (the base or target seed);
    SAE-built kinds: from `latents` and `values`, plus with `add_error` the SAE error of the template's prompt
    `tokens`, or with `error_source` "other" of the other prompt `other_tokens` (target_other_tokens).
    """
    if kind not in KINDS:
        raise SynthactError(f"unknown kind of activation '{kind}'; use one of {', '.join(KINDS)}")
    if kind == "gaussian":
        if seed is None:
            raise SynthactError("rebuilding a gaussian activation needs its draw seed (base_seed or target_seed)")
        eps = np.random.default_rng(seed).standard_normal(ctx.stats.mean.shape[0])
        return _gaussian(ctx, eps[None])[0]
    with_error = bool(add_error) and kind in TEMPLATE_KINDS
    if kind in ("real", "sae_recon") or with_error:
        if with_error and error_source == "other":
            tokens, what = other_tokens, "the other prompt's tokens (target_other_tokens) for its transplanted error"
        else:
            what = "its prompt tokens"
        if tokens is None:
            raise SynthactError(f"rebuilding a '{kind}' activation needs {what}")
        x = _forward(ctx, np.asarray(tokens, dtype=np.int64)[None])
    if kind == "real":
        return x[0]
    if kind == "sae_recon":
        return codes.decode(ctx.sae, _encode(ctx, x))[0]
    if latents is None or values is None:
        raise SynthactError(f"rebuilding a '{kind}' activation needs its latent ids and values")
    ids = torch.as_tensor(np.asarray(latents, dtype=np.int64), device=ctx.device)[None]
    vals = torch.as_tensor(np.asarray(values, dtype=np.float32), device=ctx.device)[None]
    out = decode_sparse(ctx, ids, vals)[0]
    if with_error:
        out = out + (x - codes.decode(ctx.sae, _encode(ctx, x)))[0]
    return out
