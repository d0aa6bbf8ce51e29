"""Choosing replacement latents for SAE-built kinds: the authors' frequency-matched baseline and anchor
constructions, fully random latents, and synthact's value-ordered tol / pairwise-cosine search.

Every function takes the padded template codes `lat [B, K]` (-1 = padding) on the worker's device
and returns the chosen replacements `[B, K]`; randomness comes in as uniforms drawn per base.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch

from synthact.errors import SynthactError
from synthact.generation.context import GenContext, GenerationSettings


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



class Blocked:
    """Per row of a batch, the latents no replacement may be (the template's with exclude_template, then each
    one chosen), as ascending keys row * d_sae + id: memory of the order of the rows' codes, not [B, d_sae]."""

    def __init__(self, lat: torch.Tensor, d_sae: int, exclude_template: bool):
        self.d_sae, self.rows = d_sae, lat.shape[0]
        row = torch.arange(lat.shape[0], device=lat.device)[:, None].expand_as(lat)
        keep = (lat >= 0) & exclude_template
        self.keys = torch.unique(row[keep] * d_sae + lat[keep])

    def __call__(self, cand: torch.Tensor) -> torch.Tensor:
        """bool, shaped like `cand` [B, C] (ids >= 0): which candidates are blocked in their row."""
        key = (torch.arange(cand.shape[0], device=cand.device)[:, None] * self.d_sae + cand).contiguous()
        if self.keys.numel() == 0:
            return torch.zeros(cand.shape, dtype=torch.bool, device=cand.device)
        pos = torch.searchsorted(self.keys, key).clamp(max=self.keys.numel() - 1)
        return self.keys[pos] == key

    def add(self, rows: torch.Tensor, ids: torch.Tensor) -> None:
        """Block latent ids[i] in row rows[i]."""
        self.keys = torch.unique(torch.cat([self.keys, rows * self.d_sae + ids]))

    def select(self, rows: torch.Tensor) -> Blocked:
        """The blocked latents of rows `rows` (ascending), as a batch of their own."""
        row = self.keys // self.d_sae
        keep = torch.isin(row, rows)
        out = Blocked(rows[:, None], self.d_sae, False)
        out.keys = torch.searchsorted(rows, row[keep]) * self.d_sae + self.keys[keep] % self.d_sae
        return out

    def padded(self) -> torch.Tensor:
        """[B, M] each row's blocked latents ascending, padded with -1."""
        row, ids = self.keys // self.d_sae, self.keys % self.d_sae
        per_row = torch.bincount(row, minlength=self.rows)
        width = int(per_row.max()) if self.rows and row.numel() else 0
        slot = torch.arange(row.shape[0], device=row.device) - (torch.cumsum(per_row, 0) - per_row)[row]
        out = torch.full((self.rows, width), -1, dtype=torch.int64, device=self.keys.device)
        out[row, slot] = ids
        return out


def _blocked(ctx: GenContext, lat: torch.Tensor, exclude_template: bool) -> Blocked:
    """The latents no replacement may be, to start with: the template's with exclude_template."""
    return Blocked(lat, ctx.sae.W_dec.shape[0], exclude_template)


UNIT_BUDGET_BYTES = 64 << 20  # decoder rows normalised at once when every latent's cosine is needed


def unit_rows(sae, ids: torch.Tensor) -> torch.Tensor:
    """The SAE's unit decoder directions of latents `ids` (float32 [..., d_model]), without a normalised copy of the
    whole decoder."""
    return torch.nn.functional.normalize(sae.W_dec[ids].float(), dim=-1)


_INVERSE_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # sae -> (weight version, 1 / |W_dec row|)


def cosines_to_all(sae, v: torch.Tensor) -> torch.Tensor:
    """[B, d_sae] v [B, d_model] times every unit decoder direction: v W_dec^T scaled by each row's inverse norm
    (computed once per SAE and weight version, as torch's normalize divides: by max(|row|, 1e-12)), a bounded
    block of latents at a time."""
    w_dec = sae.W_dec
    step = max(1, UNIT_BUDGET_BYTES // (4 * w_dec.shape[1]))
    version = (w_dec.data_ptr(), w_dec._version)
    cached = _INVERSE_NORMS.get(sae)
    if cached is None or cached[0] != version:
        norms = torch.cat([w_dec[a: a + step].float().norm(dim=-1) for a in range(0, w_dec.shape[0], step)])
        cached = _INVERSE_NORMS[sae] = (version, 1.0 / norms.clamp(min=1e-12))
    inverse = cached[1].to(v.device)
    return torch.cat([(v @ w_dec[a: a + step].float().T) * inverse[a: a + step]
                      for a in range(0, w_dec.shape[0], step)], 1)


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
    allowed = inside & ~blocked(cand) & (cand != latent[:, None])
    dist = torch.where(allowed, dist, torch.full_like(dist, math.inf))
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    count = allowed.sum(1).clamp(max=k)
    nearest = torch.where(torch.arange(k, device=latent.device)[None] < count[:, None], cand.gather(1, order), -1)
    return nearest, count


def nearest_k(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
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
        blocked.add(rows[live], pick[live])
    return chosen


def random_latents(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
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
        allowed = ~blocked(cand) & (cand != lat[:, t, None])
        _check_found(allowed.any(1)[live])
        pick = cand[rows, allowed.byte().argmax(1)]
        chosen[:, t] = torch.where(live, pick, 0)
        blocked.add(rows[live], pick[live])
    return chosen


def anchor(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
    """synthetic_structured (the paper): top latent i* (largest value; ties: lowest id); anchor a = among
    the `anchor_pool` allowed latents nearest i* in frequency, the one whose decoder cosine to i* is
    closest to `anchor_cos`; then each i_t, in order, -> the allowed alive latent j whose cosine to a is
    closest to cos(i*, i_t) (ties: lowest id); i* itself maps to a where a is allowed (cosine 1)."""
    device = lat.device
    rows = torch.arange(lat.shape[0], device=device)
    blocked = _blocked(ctx, lat, s.exclude_template)
    top, anchor_ids = anchor_latents(ctx, lat, values, blocked, s)
    alive = ctx.stats.alive.to(device)
    cos_anchor = cosines_to_all(ctx.sae, unit_rows(ctx.sae, anchor_ids))[:, alive]  # [B, alive]
    cos_top = torch.einsum("bkd,bd->bk", unit_rows(ctx.sae, lat.clamp(min=0)), unit_rows(ctx.sae, top))
    open_ = ~blocked(alive[None].expand(lat.shape[0], -1))  # [B, alive], kept up to date below
    chosen = torch.zeros_like(lat).clamp(min=0)
    for t in range(lat.shape[1]):
        live = lat[:, t] >= 0
        allowed = open_ & (alive[None] != lat[:, t, None])
        _check_found(allowed.any(1)[live])
        gap = torch.where(allowed, (cos_anchor - cos_top[:, t, None]).abs(), math.inf)
        at = gap.argmin(1)
        pick = alive[at]
        chosen[:, t] = torch.where(live, pick, 0)
        blocked.add(rows[live], pick[live])
        open_[rows[live], at[live]] = False
    return chosen


def anchor_latents(ctx: GenContext, lat, values, blocked, s: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(top latent [B], anchor [B]) of the anchor construction (see `anchor`)."""
    rows = torch.arange(lat.shape[0], device=lat.device)
    top = lat[rows, torch.where(lat >= 0, values, -math.inf).argmax(1)].clamp(min=0)
    pool, count = _nearest_in_frequency(ctx, top, blocked, s.anchor_pool, lat.shape[1])
    _check_found(count[(lat >= 0).any(1)])
    pool_cos = torch.einsum("bpd,bd->bp", unit_rows(ctx.sae, pool.clamp(min=0)), unit_rows(ctx.sae, top))
    return top, pool[rows, torch.where(pool >= 0, (pool_cos - s.anchor_cos).abs(), math.inf).argmin(1)].clamp(min=0)


def _check_found(found: torch.Tensor) -> None:
    if not bool(found.all()):
        raise SynthactError(
            "a template has more active latents than the reference pool has alive latents to replace them "
            "without repeats; increase reference.n_prompts, or set generation.exclude_template: [false]"
        )



def match_pairwise(
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
    """The step-by-step choice of match_pairwise on bases sorted by code length; `forbidden` [B, K] (pad -1) are
    latents never chosen; `exact` = (lo, hi, pos) enables the exact (synchronising) fallback for
    exhausted walks. Returns (chosen, any walk exhausted)."""
    b, kmax, c = cand.shape
    device = lat.device
    if c > 1:
        wt = unit_rows(ctx.sae, lat)
        target_cos = wt @ wt.transpose(1, 2)  # [B, K, K]
        chosen_dirs = torch.zeros(b, kmax, ctx.sae.W_dec.shape[1], device=device)
    chosen = torch.zeros(b, kmax, dtype=torch.long, device=device)
    exhausted = torch.zeros((), dtype=torch.bool, device=device)
    for t in range(kmax):
        n = int((k_sorted > t).sum())  # the bases still active: a prefix
        rows = torch.arange(n, device=device)
        options = cand[:n, t]  # [n, C]
        taken = torch.cat([chosen[:n, :t], lat[:n, t : t + 1]] + ([forbidden[:n]] if forbidden is not None else []), 1)
        used = (options[:, :, None] == taken[:, None, :]).any(-1)
        if c > 1 and t > 0:
            cos = torch.einsum("bcd,bmd->bcm", unit_rows(ctx.sae, options), chosen_dirs[:n, :t])
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
            chosen_dirs[:n, t] = unit_rows(ctx.sae, pick)
    return chosen, exhausted


def cosine_structure_error(
    template_latents: list[np.ndarray], latents: list[np.ndarray], w_dec: torch.Tensor
) -> np.ndarray:
    """Per draw: mean over pairs m < t of (cos(j_t, j_m) - cos(i_t, i_m))^2; NaN where k < 2."""
    out = np.full(len(latents), np.nan)
    for d, (i_ids, j_ids) in enumerate(zip(template_latents, latents)):
        k = len(j_ids)
        if k < 2:
            continue
        wi, wj = (torch.nn.functional.normalize(w_dec[torch.as_tensor(ids, dtype=torch.long, device=w_dec.device)]
                                                .detach().float().cpu(), dim=-1) for ids in (i_ids, j_ids))
        diff = (wj @ wj.T - wi @ wi.T).triu(diagonal=1)
        out[d] = float((diff**2).sum()) / (k * (k - 1) / 2)
    return out


