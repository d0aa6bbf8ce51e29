"""The kinds of activation at the SAE's hook, last position (docs/science.md, "Kinds").

`draw(kind, rngs, ctx, settings)` makes one activation per RNG. Base b consumes randomness
only from `rngs[b]`, in a fixed order, so a draw does not depend on which other bases share
the batch; the heavy work (model forward, SAE encode, frequency matching, decode) is batched.

Order of each base's random draws (what `from_provenance` and the tests rely on):
- real, sae_recon: the prompt.
- gaussian: eps ~ N(0, I) (d_model float64 normals) first, then a context prompt.
- single_latent: a context prompt, then the latent, then the pool code whose norm it takes.
- SAE-built from a template (synthetic_*, random_latents): the template prompt (redrawn while its
  SAE code is empty; nothing when the template is the base), then the choice uniforms ([k, C] for
  structure pairwise and match tol, [k] otherwise), then the value uniforms [k].

Built codes: the template's latents i_1..i_k are taken in ascending id (the authors' order; largest
value first for match tol and structure pairwise); j_t replaces i_t (`latents[t]` pairs with
`template_latents[t]`); no j is used twice, no j_t is i_t and, with `exclude_template`, no j is any
template latent. With `match_norm` the built code's values are scaled by one factor so that the
activation (decoded, plus the template's SAE error with `add_error`) has the template's norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthact.errors import SynthactError
from synthact.hooks import stream_index
from synthact.spec import KINDS, TEMPLATE_KINDS
from synthact.stats import ReferenceStats, check_affine_decoder, real_activations

VALUE_SOURCES = ("sampled", "template")
MAX_TEMPLATE_TRIES = 32  # prompts tried per base before an empty SAE code is an error
SAE_BUILT_KINDS = (*TEMPLATE_KINDS, "single_latent")


@dataclass(frozen=True)
class GenerationSettings:
    """How SAE-built kinds are made (spec.GenerationSpec; the defaults are the paper's)."""

    match: str = "nearest_k"  # synthetic_baseline: "nearest_k" (the paper) or "tol"
    nearest_k: int = 10  # k of nearest_k: random among the k allowed latents nearest in frequency
    tol: float = 0.1  # max |log10 f(j) - log10 f(i)| of match tol and structure pairwise
    structure: str = "anchor"  # synthetic_structured: "anchor" (the paper) or "pairwise"
    anchor_cos: float = 0.42  # the anchor's decoder cosine to the top latent
    anchor_pool: int = 100  # the anchor is chosen among this many latents nearest the top one in frequency
    candidates: int = 1  # C of structure pairwise (1 = the tol baseline)
    value_source: str = "template"  # "template": i's value (the paper); "sampled": from j's own values
    exclude_template: bool = True  # no replacement is any template latent
    match_norm: bool = False  # rescale the code to the template's norm
    add_error: bool = False  # add the template's SAE error (real - sae_recon)


def method(kind: str, s: GenerationSettings) -> str:
    """How a template-built kind picks its latents: random, nearest_k, anchor, or the value-ordered tol /
    pairwise search (tol is pairwise with C = 1)."""
    if kind == "random_latents":
        return "random"
    if kind == "synthetic_baseline":
        return "nearest_k" if s.match == "nearest_k" else "pairwise"
    return "anchor" if s.structure == "anchor" else "pairwise"


@dataclass
class GenContext:
    """Everything a draw needs: model, SAE, reference statistics, prompts, layer."""

    model: object
    sae: object
    stats: ReferenceStats
    corpus: object
    layer: int
    n_ctx: int
    device: str


@dataclass
class Activations:
    """A batch of B draws of one kind, with what is needed to rebuild each one."""

    kind: str
    vectors: torch.Tensor  # [B, d_model] float32 on ctx.device
    docs: np.ndarray  # int64 [B]
    offsets: np.ndarray  # int64 [B]
    tokens: np.ndarray  # int64 [B, n_ctx]: the source/template prompt, or a context prompt
    latents: list[np.ndarray] | None  # int32 latent ids per draw (SAE-built and sae_recon)
    values: list[np.ndarray] | None  # float32 values per draw
    l0: np.ndarray | None  # int32 [B]: size of the built code, or L0 of the SAE code of the vector
    prompt_based: bool  # the activation is a function of `tokens`
    template_latents: list[np.ndarray] | None = None  # synthetic kinds: i_1..i_k, aligned with latents

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def replace_rows(self, rows: list[int], other: Activations) -> None:
        """Overwrite draws `rows` with the draws of `other` (same kind, len(other) == len(rows))."""
        idx = torch.as_tensor(rows, device=self.vectors.device)
        self.vectors[idx] = other.vectors
        for name in ("docs", "offsets", "tokens", "l0"):
            mine = getattr(self, name)
            if mine is not None:
                mine[rows] = getattr(other, name)
        for name in ("latents", "values", "template_latents"):
            mine = getattr(self, name)
            if mine is not None:
                for r, item in zip(rows, getattr(other, name)):
                    mine[r] = item


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
        _check_settings(settings)
        return _draw_synthetic(kind, rngs, ctx, settings, template)
    return {
        "real": _draw_real,
        "sae_recon": _draw_sae_recon,
        "gaussian": _draw_gaussian,
        "single_latent": _draw_single_latent,
    }[kind](rngs, ctx)


def _check_settings(s: GenerationSettings) -> None:
    if s.value_source not in VALUE_SOURCES:
        raise SynthactError(f"value_source '{s.value_source}' is unknown; use one of {', '.join(VALUE_SOURCES)}")
    if not (s.tol >= 0 and math.isfinite(s.tol)):
        raise SynthactError(f"tol {s.tol} must be a finite number >= 0 (a distance in log10 frequency)")
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


def _encode(ctx: GenContext, x: torch.Tensor) -> torch.Tensor:
    return ctx.sae.encode(x.to(ctx.sae.W_dec.dtype))


def _l0(z: torch.Tensor) -> np.ndarray:
    return (z != 0).sum(-1).cpu().numpy().astype(np.int32)


def _sparse_rows(z: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row: (latent ids ascending int32, values float32) of a dense code batch."""
    zc = z.float().cpu()
    lat, val = [], []
    for row in zc:
        ids = torch.nonzero(row).flatten()
        lat.append(ids.numpy().astype(np.int32))
        val.append(row[ids].numpy().astype(np.float32))
    return lat, val


# --------------------------------------------------------------------------- simple kinds


@torch.no_grad()
def _draw_real(rngs, ctx: GenContext) -> Activations:
    docs, offsets, tokens = _prompts(rngs, ctx)
    x = _forward(ctx, tokens)
    return Activations("real", x, docs, offsets, tokens, None, None, _l0(_encode(ctx, x)), True)


@torch.no_grad()
def _draw_sae_recon(rngs, ctx: GenContext) -> Activations:
    docs, offsets, tokens = _prompts(rngs, ctx)
    z = _encode(ctx, _forward(ctx, tokens))
    lat, val = _sparse_rows(z)
    return Activations("sae_recon", ctx.sae.decode(z).float(), docs, offsets, tokens, lat, val, _l0(z), True)


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
    return Activations("gaussian", x, docs, offsets, tokens, None, None, _l0(_encode(ctx, x)), False)


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
    z: torch.Tensor  # their SAE codes [B, d_sae]


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
        z[idx] = _encode(ctx, x[idx])
    raise SynthactError(
        f"{MAX_TEMPLATE_TRIES} prompts in a row had an empty SAE code at layer {ctx.layer}, so there is no "
        "template for a synthetic activation; the SAE is almost never active on this corpus: check that the "
        "SAE belongs to this model and layer"
    )


def _match_windows(ctx: GenContext, lat: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi) into the frequency-sorted alive latents: those with |log10 f(j) - log10 f(i)| <= tol.

    A template latent that never fired in the pool gets frequency 0.5 / P. Where no alive latent
    lies within tol, the window widens to the alive latents at the nearest log-frequency.
    """
    stats = ctx.stats
    _, logf_sorted = stats.alive_by_log_freq
    logf_sorted = logf_sorted.to(lat.device)
    f = stats.freq.to(lat.device)[lat]
    logf = torch.log10(torch.where(f > 0, f, torch.full_like(f, 0.5 / stats.n)))
    eps = 1e-9

    def window(radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.searchsorted(logf_sorted, (logf - radius - eps).contiguous(), right=False)
        hi = torch.searchsorted(logf_sorted, (logf + radius + eps).contiguous(), right=True)
        return lo, hi

    lo, hi = window(torch.full_like(logf, tol))
    empty = hi == lo
    if bool(empty.any()):
        n = logf_sorted.shape[0]
        below = logf_sorted[(lo - 1).clamp(0, n - 1)]
        above = logf_sorted[lo.clamp(0, n - 1)]
        nearest = torch.minimum((logf - below).abs(), (above - logf).abs())
        wide_lo, wide_hi = window(torch.where(empty, nearest, torch.full_like(logf, tol)))
        lo, hi = torch.where(empty, wide_lo, lo), torch.where(empty, wide_hi, hi)
    return lo, hi


def _unused_near(ctx: GenContext, lo: int, hi: int, start: int, logf_i: float, used: set[int]) -> int:
    """An unused alive latent: walk the window from `start`, else the nearest in log-frequency."""
    ids, logf_sorted = (t.cpu().numpy() for t in ctx.stats.alive_by_log_freq)
    for pos in [*range(start, hi), *range(lo, start)]:
        if int(ids[pos]) not in used:
            return int(ids[pos])
    for pos in np.argsort(np.abs(logf_sorted - logf_i), kind="stable"):
        if int(ids[pos]) not in used:
            return int(ids[pos])
    raise SynthactError(
        f"a template has more active latents than the {ids.shape[0]} alive latents of the reference pool, so "
        "no replacement without repeats exists; increase reference.n_prompts"
    )


def _paired_templates(base: Activations, ctx: GenContext) -> _Templates:
    """The bases as templates: their vectors and SAE codes (an empty code gives an empty built code)."""
    x = base.vectors.float()
    return _Templates(base.docs.copy(), base.offsets.copy(), base.tokens.copy(), x, _encode(ctx, x))


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
    for lat, val in zip(*_sparse_rows(templ.z)):
        order = np.argsort(-val, kind="stable") if how == "pairwise" else np.arange(lat.shape[0])
        tlat.append(lat[order].astype(np.int64)), tval.append(val[order])
    k = np.array([t.shape[0] for t in tlat])
    u_cand = [rng.random((kb, c)) for rng, kb in zip(rngs, k)]
    u_val = [rng.random(kb) for rng, kb in zip(rngs, k)]

    b, kmax = len(rngs), int(k.max())
    lat = torch.full((b, kmax), -1, dtype=torch.long)
    tv = torch.zeros(b, kmax)
    uc = torch.zeros(b, kmax, c, dtype=torch.float64)
    uv = torch.zeros(b, kmax, dtype=torch.float64)
    for i in range(b):
        lat[i, : k[i]] = torch.from_numpy(tlat[i])
        tv[i, : k[i]] = torch.from_numpy(tval[i])
        uc[i, : k[i]] = torch.from_numpy(u_cand[i])
        uv[i, : k[i]] = torch.from_numpy(u_val[i])
    lat, tv, uc, uv = lat.to(device), tv.to(device), uc.to(device), uv.to(device)
    mask = lat >= 0

    if kmax == 0:
        chosen = lat.clamp(min=0)
    elif how == "pairwise":
        chosen = _match(ctx, lat.clamp(min=0), k, uc, settings.tol, settings.exclude_template)
    else:
        pick = {"nearest_k": _nearest_k, "random": _random_latents, "anchor": _anchor}[how]
        chosen = pick(ctx, lat, tv, uc[..., 0], settings)

    if settings.value_source == "template":
        values = tv
    else:
        counts = stats.value_counts.to(device)[chosen]
        pick = torch.minimum((uv * counts).long(), (counts - 1).clamp(min=0))
        # A latent that never fired at the pool's last positions has no values: it keeps the template's.
        values = torch.where(counts > 0, stats.value_samples.to(device)[chosen, pick], tv)
    values = values * mask
    error = templ.x - ctx.sae.decode(templ.z).float() if settings.add_error else torch.zeros_like(templ.x)
    if settings.match_norm:
        code = torch.einsum("bk,bkd->bd", values, ctx.sae.W_dec.float()[chosen])
        offset = ctx.sae.b_dec.float() + error
        values = values * _scale_to_norm(code, offset, templ.x.norm(dim=-1))[:, None]
    x = decode_sparse(ctx, chosen, values) + error

    chosen_np, values_np = chosen.cpu().numpy(), values.float().cpu().numpy()
    return Activations(
        kind, x, templ.docs, templ.offsets, templ.tokens,
        [chosen_np[i, : k[i]].astype(np.int32) for i in range(b)],
        [values_np[i, : k[i]].astype(np.float32) for i in range(b)],
        k.astype(np.int32), True,
        template_latents=[t.astype(np.int32) for t in tlat],
    )


# --------------------------------------------------------------------------- the authors' constructions


def _blocked(ctx: GenContext, lat: torch.Tensor, exclude_template: bool) -> torch.Tensor:
    """[B, d_sae + 1] bool: latents no replacement may be (the template's, with exclude_template);
    column d_sae absorbs padding (-1)."""
    d_sae = ctx.sae.W_dec.shape[0]
    blocked = torch.zeros(lat.shape[0], d_sae + 1, dtype=torch.bool, device=lat.device)
    if exclude_template:
        blocked.scatter_(1, torch.where(lat >= 0, lat, d_sae), True)
    return blocked


def _frequency_table(ctx: GenContext, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(alive ids sorted by frequency, their frequencies): the authors match on frequency itself."""
    ids, logf = ctx.stats.alive_by_log_freq
    return ids.to(device), (10.0 ** logf.to(device).double())


def _nearest_in_frequency(
    ctx: GenContext, latent: torch.Tensor, blocked: torch.Tensor, k: int, reach: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the k allowed alive latents nearest to `latent [B]` in frequency, nearest first
    (ties: the lower frequency rank), never `latent` itself nor a blocked one; padded with -1.
    `reach` bounds how many latents nearer than the k-th can be disallowed. Returns (ids [B, k], count [B])."""
    ids, f = _frequency_table(ctx, latent.device)
    n = ids.shape[0]
    f_i = ctx.stats.freq.to(latent.device).double()[latent]
    centre = torch.searchsorted(f, f_i.contiguous())
    radius = k + reach + 1
    pos = centre[:, None] + torch.arange(-radius, radius + 1, device=latent.device)[None, :]
    inside = (pos >= 0) & (pos < n)
    pos = pos.clamp(0, n - 1)
    cand = ids[pos]
    dist = (f[pos] - f_i[:, None]).abs()
    allowed = inside & ~blocked.gather(1, cand) & (cand != latent[:, None])
    dist = torch.where(allowed, dist, torch.full_like(dist, math.inf))
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    count = allowed.sum(1).clamp(max=k)
    nearest = torch.where(torch.arange(k, device=latent.device)[None] < count[:, None], cand.gather(1, order), -1)
    return nearest, count


def _nearest_k(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
    """synthetic_baseline (the paper): each i_t, in order, -> uniformly one of the k allowed latents
    nearest to it in frequency; allowed = alive, not i_t, not chosen before (and not a template latent
    with exclude_template). When nearer latents are used the k are the next nearest (the authors' rule)."""
    blocked = _blocked(ctx, lat, s.exclude_template)
    chosen = torch.zeros_like(lat).clamp(min=0)
    rows = torch.arange(lat.shape[0], device=lat.device)
    for t in range(lat.shape[1]):
        live = lat[:, t] >= 0
        near, count = _nearest_in_frequency(ctx, lat[:, t].clamp(min=0), blocked, s.nearest_k, 2 * lat.shape[1])
        _check_found(count[live])
        pick = near[rows, (u[:, t] * count.clamp(min=1)).long().clamp(max=s.nearest_k - 1)]
        chosen[:, t] = torch.where(live, pick, 0)
        blocked[rows[live], pick[live]] = True
    return chosen


def _random_latents(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
    """random_latents: each i_t -> a uniformly random alive latent (the first allowed one from there
    in id order when it is not allowed); allowed as for nearest_k."""
    ids = ctx.stats.alive.to(lat.device)
    n = ids.shape[0]
    blocked = _blocked(ctx, lat, s.exclude_template)
    chosen = torch.zeros_like(lat).clamp(min=0)
    rows = torch.arange(lat.shape[0], device=lat.device)
    walk = torch.arange(2 * lat.shape[1] + 2, device=lat.device)
    for t in range(lat.shape[1]):
        live = lat[:, t] >= 0
        cand = ids[((u[:, t] * n).long()[:, None] + walk[None]) % n]
        allowed = ~blocked.gather(1, cand) & (cand != lat[:, t, None])
        _check_found(allowed.any(1)[live])
        pick = cand[rows, allowed.byte().argmax(1)]
        chosen[:, t] = torch.where(live, pick, 0)
        blocked[rows[live], pick[live]] = True
    return chosen


def _anchor(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
    """synthetic_structured (the paper): top latent i* (largest value; ties: lowest id); anchor a = among
    the `anchor_pool` allowed latents nearest i* in frequency, the one whose decoder cosine to i* is
    closest to `anchor_cos`; then each i_t, in order, -> the allowed alive latent j whose cosine to a is
    closest to cos(i*, i_t) (ties: lowest id); i* itself maps to a where a is allowed (cosine 1)."""
    device = lat.device
    rows = torch.arange(lat.shape[0], device=device)
    live_rows = (lat >= 0).any(1)
    unit = torch.nn.functional.normalize(ctx.sae.W_dec.float(), dim=-1)
    top = lat[rows, torch.where(lat >= 0, values, -math.inf).argmax(1)].clamp(min=0)
    blocked = _blocked(ctx, lat, s.exclude_template)
    pool, count = _nearest_in_frequency(ctx, top, blocked, s.anchor_pool, lat.shape[1])
    _check_found(count[live_rows])
    pool_cos = torch.einsum("bpd,bd->bp", unit[pool.clamp(min=0)], unit[top])
    anchor = pool[rows, torch.where(pool >= 0, (pool_cos - s.anchor_cos).abs(), math.inf).argmin(1)].clamp(min=0)
    alive = ctx.stats.alive.to(device)
    cos_anchor = unit[anchor] @ unit[alive].T  # [B, alive]
    cos_top = torch.einsum("bkd,bd->bk", unit[lat.clamp(min=0)], unit[top])
    chosen = torch.zeros_like(lat).clamp(min=0)
    for t in range(lat.shape[1]):
        live = lat[:, t] >= 0
        allowed = ~blocked[:, alive] & (alive[None] != lat[:, t, None])
        _check_found(allowed.any(1)[live])
        gap = torch.where(allowed, (cos_anchor - cos_top[:, t, None]).abs(), math.inf)
        pick = alive[gap.argmin(1)]
        chosen[:, t] = torch.where(live, pick, 0)
        blocked[rows[live], pick[live]] = True
    return chosen


def _check_found(found: torch.Tensor) -> None:
    if not bool(found.all()):
        raise SynthactError(
            "a template has more active latents than the reference pool has alive latents to replace them "
            "without repeats; increase reference.n_prompts, or set generation.exclude_template: [false]"
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


def _match(
    ctx: GenContext, lat: torch.Tensor, k: np.ndarray, uc: torch.Tensor, tol: float, exclude_template: bool
) -> torch.Tensor:
    """Replacement latents [B, K] of match tol / structure pairwise: frequency-matched, no repeats, never
    the replaced latent (nor a template latent with exclude_template), and (C > 1) the best cosine fit.

    Candidate c for position t is the window's latent at lo + floor(u[t, c] * (hi - lo)); the
    chosen one is the allowed candidate minimising sum_{m<t} (cos(j_t, j_m) - cos(i_t, i_m))^2
    (ties: the first), so C = 1 takes the first candidate: the baseline. If every candidate is
    already used, the next unused latent after the first candidate in the window is taken.
    Bases are processed longest code first, so step t only touches the bases whose code is
    longer than t. The loop never waits for the device unless a window is exhausted (rare),
    in which case it reruns with an exact fallback.
    """
    order = np.argsort(-k, kind="stable")
    order_t = torch.as_tensor(order, device=lat.device)
    lat, uc, k_sorted = lat[order_t], uc[order_t], k[order]
    lo, hi = _match_windows(ctx, lat, tol)
    pos = torch.minimum(lo[..., None] + (uc * (hi - lo)[..., None]).long(), (hi - 1)[..., None])
    walk = lo[..., None] + (pos[..., :1] - lo[..., None] + torch.arange(1, WALK + 1, device=lat.device)) % (hi - lo)[
        ..., None
    ]
    ids_sorted = ctx.stats.alive_by_log_freq[0].to(lat.device)
    valid = torch.arange(lat.shape[1], device=lat.device)[None] < torch.as_tensor(k_sorted, device=lat.device)[:, None]
    forbidden = torch.where(valid, lat, -1) if exclude_template else None
    args = (ctx, lat, k_sorted, ids_sorted[pos], ids_sorted[walk], forbidden)
    chosen, exhausted = _greedy(*args, None)
    if bool(exhausted):
        chosen, _ = _greedy(*args, (lo, hi, pos))
    out = torch.empty_like(chosen)
    out[order_t] = chosen
    return out


WALK = 8  # window positions tried after the first candidate when every candidate is used


def _greedy(ctx, lat, k_sorted, cand, walk, forbidden, exact):
    """The step-by-step choice of _match on bases sorted by code length; `forbidden` [B, K] (pad -1) are
    latents never chosen; `exact` = (lo, hi, pos) enables the exact (synchronising) fallback for
    exhausted walks. Returns (chosen, any walk exhausted)."""
    b, kmax, c = cand.shape
    device = lat.device
    if c > 1:
        unit = torch.nn.functional.normalize(ctx.sae.W_dec.float(), dim=-1)
        wt = unit[lat]
        target_cos = wt @ wt.transpose(1, 2)  # [B, K, K]
        chosen_dirs = torch.zeros(b, kmax, unit.shape[1], device=device)
    chosen = torch.zeros(b, kmax, dtype=torch.long, device=device)
    exhausted = torch.zeros((), dtype=torch.bool, device=device)
    for t in range(kmax):
        n = int((k_sorted > t).sum())  # the bases still active: a prefix
        rows = torch.arange(n, device=device)
        options = cand[:n, t]  # [n, C]
        taken = torch.cat([chosen[:n, :t], lat[:n, t : t + 1]] + ([forbidden[:n]] if forbidden is not None else []), 1)
        used = (options[:, :, None] == taken[:, None, :]).any(-1)
        if c > 1 and t > 0:
            cos = torch.einsum("bcd,bmd->bcm", unit[options], chosen_dirs[:n, :t])
            err = ((cos - target_cos[:n, t, None, :t]) ** 2).sum(-1)
        else:
            err = torch.zeros(n, c, device=device)
        pick = options[rows, err.masked_fill(used, math.inf).argmin(dim=1)]
        steps = walk[:n, t]  # [n, WALK]
        steps_used = (steps[:, :, None] == taken[:, None, :]).any(-1)
        all_used = used.all(dim=1)
        pick = torch.where(all_used, steps[rows, steps_used.byte().argmin(dim=1)], pick)
        dead_end = all_used & steps_used.all(dim=1)
        exhausted |= dead_end.any()
        if exact is not None:
            lo, hi, pos = exact
            for i in torch.nonzero(dead_end).flatten().tolist():
                pick[i] = _unused_near(
                    ctx, int(lo[i, t]), int(hi[i, t]), int(pos[i, t, 0]),
                    float(torch.log10(ctx.stats.freq[lat[i, t]].clamp(min=0.5 / ctx.stats.n))),
                    set(taken[i].tolist()),
                )
        chosen[:n, t] = pick
        if c > 1:
            chosen_dirs[:n, t] = unit[pick]
    return chosen, exhausted


def cosine_structure_error(
    template_latents: list[np.ndarray], latents: list[np.ndarray], w_dec: torch.Tensor
) -> np.ndarray:
    """Per draw: mean over pairs m < t of (cos(j_t, j_m) - cos(i_t, i_m))^2; NaN where k < 2."""
    w = torch.nn.functional.normalize(w_dec.detach().float().cpu(), dim=-1)
    out = np.full(len(latents), np.nan)
    for d, (i_ids, j_ids) in enumerate(zip(template_latents, latents)):
        k = len(j_ids)
        if k < 2:
            continue
        wi, wj = w[torch.as_tensor(i_ids, dtype=torch.long)], w[torch.as_tensor(j_ids, dtype=torch.long)]
        diff = (wj @ wj.T - wi @ wi.T).triu(diagonal=1)
        out[d] = float((diff**2).sum()) / (k * (k - 1) / 2)
    return out


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
) -> torch.Tensor:
    """Rebuild one activation [d_model] from what a result row stores.

    real / sae_recon: from `tokens`; gaussian: from the draw `seed` (the base or target seed);
    SAE-built kinds: from `latents` and `values` (plus the template's SAE error from `tokens`
    when `add_error`).
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
        if tokens is None:
            raise SynthactError(f"rebuilding a '{kind}' activation needs its prompt tokens")
        x = _forward(ctx, np.asarray(tokens, dtype=np.int64)[None])
    if kind == "real":
        return x[0]
    if kind == "sae_recon":
        return ctx.sae.decode(_encode(ctx, x)).float()[0]
    if latents is None or values is None:
        raise SynthactError(f"rebuilding a '{kind}' activation needs its latent ids and values")
    ids = torch.as_tensor(np.asarray(latents, dtype=np.int64), device=ctx.device)[None]
    vals = torch.as_tensor(np.asarray(values, dtype=np.float32), device=ctx.device)[None]
    out = decode_sparse(ctx, ids, vals)[0]
    if with_error:
        out = out + (x - ctx.sae.decode(_encode(ctx, x)).float())[0]
    return out
