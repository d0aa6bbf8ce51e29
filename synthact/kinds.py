"""The six kinds of activation at `blocks.{L}.hook_resid_pre`, last position.

`draw(kind, rngs, ctx, settings)` makes one activation per RNG. Base b consumes randomness
only from `rngs[b]`, in a fixed order, so a draw does not depend on which other bases share
the batch; the heavy work (model forward, SAE encode, frequency matching, decode) is batched.

Order of each base's random draws (what `from_provenance` and the tests rely on):
- real, sae_recon: the prompt.
- gaussian: eps ~ N(0, I) (d_model float64 normals) first, then a context prompt.
- single_latent: a context prompt, then the latent, then the pool code whose norm it takes.
- synthetic_*: the template prompt (redrawn while its SAE code is empty), then the candidate
  uniforms [k, C], then the value uniforms [k].

Synthetic codes: the template's latents i_1..i_k are taken largest value first; j_t replaces
i_t (`latents[t]` pairs with `template_latents[t]`). With `match_norm` (default) the built
code's values are scaled by one factor so that the synthetic activation (decoded, plus the
template's SAE error with `add_error`) has the norm of its real template activation: synthetic
kinds then match real L0 (by construction) and real norms (science.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthact.errors import SynthactError
from synthact.hooks import stream_index
from synthact.spec import KINDS, SYNTHETIC_KINDS
from synthact.stats import ReferenceStats, check_affine_decoder, real_activations

VALUE_SOURCES = ("sampled", "template")
MAX_TEMPLATE_TRIES = 32  # prompts tried per base before an empty SAE code is an error
SAE_BUILT_KINDS = (*SYNTHETIC_KINDS, "single_latent")


@dataclass(frozen=True)
class GenerationSettings:
    """How synthetic kinds are built (the grid axes of science.md)."""

    tol: float = 0.1  # max |log10 f(j) - log10 f(i)| between template latent i and replacement j
    candidates: int = 1  # C: frequency-matched candidates per latent (1 = synthetic_baseline)
    value_source: str = "sampled"  # "sampled": from j's own non-zero values; "template": i's value
    add_error: bool = False  # add the template's SAE error (real - sae_recon)
    # Scale the built code so ||sum_t v_t W_dec[j_t]|| equals the template code's ||z @ W_dec||:
    # random latents add up less coherently than co-active real ones, and would otherwise give
    # synthetic activations a smaller norm than real ones (science.md: match real norm statistics).
    match_norm: bool = True


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

    def replace_rows(self, rows: list[int], other: "Activations") -> None:
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
    kind: str, rngs: list[np.random.Generator], ctx: GenContext, settings: GenerationSettings | None = None
) -> Activations:
    """One activation of `kind` per RNG in `rngs`."""
    if kind not in KINDS:
        raise SynthactError(f"unknown kind of activation '{kind}'; use one of {', '.join(KINDS)}")
    if not rngs:
        raise SynthactError("draw needs at least one RNG (one per base)")
    settings = settings or GenerationSettings()
    if kind in SYNTHETIC_KINDS:
        _check_settings(settings)
        return _draw_synthetic(kind, rngs, ctx, settings)
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
    if s.candidates < 1:
        raise SynthactError(f"candidates {s.candidates} must be >= 1 (C = 1 is the baseline)")


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


@torch.no_grad()
def _draw_synthetic(kind: str, rngs, ctx: GenContext, settings: GenerationSettings) -> Activations:
    check_affine_decoder(ctx.sae)
    stats, device = ctx.stats, ctx.device
    c = settings.candidates if kind == "synthetic_structured" else 1
    templ = _draw_templates(rngs, ctx)

    # The template codes, largest value first: the greedy search fixes the big latents first.
    tlat, tval = [], []
    for lat, val in zip(*_sparse_rows(templ.z)):
        order = np.argsort(-val, kind="stable")
        tlat.append(lat[order].astype(np.int64)), tval.append(val[order])
    k = np.array([t.shape[0] for t in tlat])
    u_cand = [rng.random((kb, c)) for rng, kb in zip(rngs, k)]
    u_val = [rng.random(kb) for rng, kb in zip(rngs, k)]

    b, kmax = len(rngs), int(k.max())
    lat = torch.zeros(b, kmax, dtype=torch.long)
    tv = torch.zeros(b, kmax)
    uc = torch.zeros(b, kmax, c, dtype=torch.float64)
    uv = torch.zeros(b, kmax, dtype=torch.float64)
    for i in range(b):
        lat[i, : k[i]] = torch.from_numpy(tlat[i])
        tv[i, : k[i]] = torch.from_numpy(tval[i])
        uc[i, : k[i]] = torch.from_numpy(u_cand[i])
        uv[i, : k[i]] = torch.from_numpy(u_val[i])
    lat, tv, uc, uv = lat.to(device), tv.to(device), uc.to(device), uv.to(device)
    mask = torch.arange(kmax, device=device)[None, :] < torch.as_tensor(k, device=device)[:, None]

    chosen = _match(ctx, lat, k, uc, settings.tol)

    if settings.value_source == "template":
        values = tv
    else:
        counts = stats.value_counts.to(device)[chosen]
        pick = torch.minimum((uv * counts).long(), (counts - 1).clamp(min=0))
        values = stats.value_samples.to(device)[chosen, pick]
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


def _scale_to_norm(code: torch.Tensor, offset: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """alpha >= 0 per row with ||alpha * code + offset|| = target (else the alpha that comes closest)."""
    a = (code * code).sum(-1).clamp(min=1e-12)
    half_b = (code * offset).sum(-1)
    c = (offset * offset).sum(-1) - target**2
    disc = half_b**2 - a * c
    root = (-half_b + disc.clamp(min=0).sqrt()) / a
    closest = (-half_b / a).clamp(min=0)
    return torch.where((disc >= 0) & (root >= 0), root, closest)


def _match(ctx: GenContext, lat: torch.Tensor, k: np.ndarray, uc: torch.Tensor, tol: float) -> torch.Tensor:
    """Replacement latents [B, K]: frequency-matched, no repeats, and (C > 1) the best cosine fit.

    Candidate c for position t is the window's latent at lo + floor(u[t, c] * (hi - lo)); the
    chosen one is the unused candidate minimising sum_{m<t} (cos(j_t, j_m) - cos(i_t, i_m))^2
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
    chosen, exhausted = _greedy(ctx, lat, k_sorted, ids_sorted[pos], ids_sorted[walk], None)
    if bool(exhausted):
        chosen, _ = _greedy(ctx, lat, k_sorted, ids_sorted[pos], ids_sorted[walk], (lo, hi, pos))
    out = torch.empty_like(chosen)
    out[order_t] = chosen
    return out


WALK = 8  # window positions tried after the first candidate when every candidate is used


def _greedy(ctx, lat, k_sorted, cand, walk, exact):
    """The step-by-step choice of _match on bases sorted by code length; `exact` = (lo, hi, pos) enables
    the exact (synchronising) fallback for exhausted walks. Returns (chosen, any walk exhausted)."""
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
        used = (options[:, :, None] == chosen[:n, None, :t]).any(-1)
        if c > 1 and t > 0:
            cos = torch.einsum("bcd,bmd->bcm", unit[options], chosen_dirs[:n, :t])
            err = ((cos - target_cos[:n, t, None, :t]) ** 2).sum(-1)
        else:
            err = torch.zeros(n, c, device=device)
        pick = options[rows, err.masked_fill(used, math.inf).argmin(dim=1)]
        if t > 0:
            steps = walk[:n, t]  # [n, WALK]
            steps_used = (steps[:, :, None] == chosen[:n, None, :t]).any(-1)
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
                        set(chosen[i, :t].tolist()),
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
    with_error = bool(add_error) and kind in SYNTHETIC_KINDS
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
