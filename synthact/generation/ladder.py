"""The ladder beyond the paper: replacement latents weighted by co-occurrence and kept decoder cosines,
value statistics, and the swapped-code controls (docs/science.md, "Beyond the paper: the ladder").

Like matching.py, each construction takes the padded template codes `lat [B, K]` (-1 = padding) on the
worker's device and returns the replacements `[B, K]`, one batched step per code slot; randomness comes
in as one uniform per slot, drawn per base.

- `cooccur` (kind synthetic_cooccur, rungs R3 / R4 and their 2 x 2 with R1 / geometry alone): slot by slot,
  in ascending template id, among the candidates (the `nearest_k` allowed latents nearest to i_t in
  frequency, or with `cooccur_window` "all" every allowed alive latent: the authors' challenger), draw j
  with probability proportional to
      w_j = [sum over the latents u already chosen of count(u, j)]  (`cooccur` "counts"; 1 with "none")
            * exp(-(e_j - min e) / geometry_temp)                   (`geometry_temp` > 0)
  where e_j = mean over m < t of (cos(j, j_m) - cos(i_t, i_m))^2 is the error in kept decoder cosines.
  count(u, j) comes from the statistics part of the pool (stats.cooccurrence); where no candidate has
  weight (the first slot, or no co-occurrence mass in the window) the draw is uniform over the candidates,
  so with `cooccur` "none" and no geometry this is the paper's baseline (R1) draw for draw.
- values (value_source): `ranked` draws each latent's value from its own pool values, then reassigns the
  drawn values by rank to the template's value order (R5); `permuted` permutes the template's values among
  the code's latents (a control).
- `swapped` (kind control_swapped): the template's code with `swaps` of its latents replaced as the
  baseline replaces them (frequency-matched, never a template latent), the latents that co-occur most
  (`swap_order` most_cooccurring) or least with the rest of the code first; the rest are kept.
- `other_latents` (kind control_other_latents): right values, wrong latents. The latent set of another real
  prompt's SAE code (with `exclude_template`, less the template's latents) carries the template's values by
  rank: the template's r-th largest value goes to the other code's r-th largest latent (ties: lower slot, lower
  id). The built code keeps the template's L0 where the other code has that many latents (kinds.py draws
  further other prompts, up to 32 in all, kinds.OTHER_ROUNDS, while it has fewer); where it still has fewer,
  the template's smallest values are left out and the built code has the other code's L0 (`target_l0`).
"""

from __future__ import annotations

import math

import torch

from synthact.generation.context import GenContext, GenerationSettings
from synthact.generation.matching import _blocked, _check_found, _nearest_in_frequency
from synthact.generation.stats import Cooccurrence, cooccurrence


class _Tally:
    """For each row, sum over the latents u added so far of count(u, j), dense over j [B, d_sae + 1]."""

    def __init__(self, table: Cooccurrence, freq: torch.Tensor, rows: int, device):
        self.table, self.freq = table, freq.to(device).double()
        self.d_sae = self.freq.shape[0]
        self.stored = torch.zeros(rows, self.d_sae + 1, dtype=torch.float64, device=device)
        self.stored_f = torch.zeros_like(self.stored)  # sum of f_u over truncated u whose row stores j
        self.chance_f = torch.zeros(rows, 1, dtype=torch.float64, device=device)  # sum of f_u over truncated u

    def add(self, latent: torch.Tensor, live: torch.Tensor) -> None:
        t = self.table
        partners = t.partners[latent]  # [B, m]
        cols = torch.where(partners >= 0, partners, self.d_sae)
        weight = live[:, None].double()
        self.stored.scatter_add_(1, cols, t.counts[latent].double() * weight)
        cut = (t.truncated[latent] & live).double()[:, None]
        self.stored_f.scatter_add_(1, cols, (self.freq[latent][:, None] * cut).expand_as(cols).contiguous())
        self.chance_f += self.freq[latent][:, None] * cut

    def weights(self, cand: torch.Tensor) -> torch.Tensor:
        """[B, C] summed counts for candidates `cand` (ids < d_sae)."""
        chance = self.freq[cand] * self.table.n_codes * (self.chance_f - self.stored_f.gather(1, cand))
        return self.stored.gather(1, cand) + chance.clamp(min=0)


def _table(ctx: GenContext, s: GenerationSettings, device) -> Cooccurrence:
    t = cooccurrence(ctx.stats, s.cooccur_top_m, s.holdout)
    return Cooccurrence(t.n_codes, t.holdout, t.partners.to(device), t.counts.to(device), t.fires.to(device),
                        t.row_totals.to(device), t.truncated.to(device))


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the index drawn with probability proportional to w [B, C] (>= 0, a positive sum) by uniform u [B]."""
    c = w.cumsum(1)
    return (c <= (u * c[:, -1])[:, None]).sum(1).clamp(max=w.shape[1] - 1)


def cooccur(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
    """synthetic_cooccur: see the module docstring."""
    device = lat.device
    b, k = lat.shape
    rows = torch.arange(b, device=device)
    alive = ctx.stats.alive.to(device)
    blocked = _blocked(ctx, lat, s.exclude_template)
    tally = _Tally(_table(ctx, s, device), ctx.stats.freq, b, device) if s.cooccur == "counts" else None
    geometry = s.geometry_temp > 0
    if geometry:
        unit = torch.nn.functional.normalize(ctx.sae.W_dec.float(), dim=-1)
        wt = unit[lat.clamp(min=0)]
        target_cos = wt @ wt.transpose(1, 2)  # [B, K, K]
        chosen_dirs = torch.zeros(b, k, unit.shape[1], device=device)
        # sum over the chosen j_m of cos(., j_m)^2, for every latent: only where every latent is a candidate
        squares = torch.zeros(b, unit.shape[0], device=device) if s.cooccur_window == "all" else None
    chosen = torch.zeros_like(lat).clamp(min=0)
    for t in range(k):
        live = lat[:, t] >= 0
        i_t = lat[:, t].clamp(min=0)
        if s.cooccur_window == "nearest_k":
            cand, count = _nearest_in_frequency(ctx, i_t, blocked, s.nearest_k, 2 * k)
            valid = torch.arange(cand.shape[1], device=device)[None] < count[:, None]
            cand = cand.clamp(min=0)
        else:
            cand = alive[None].expand(b, -1)
            valid = ~blocked.gather(1, cand) & (cand != i_t[:, None])
        _check_found(valid.any(1)[live])
        w = valid.double()
        if tally is not None:
            w = w * tally.weights(cand)
        if geometry and t > 0:
            err = torch.where(valid, _cosine_error(unit, cand, chosen_dirs[:, :t], target_cos[:, t, :t], squares),
                              math.inf)
            w = w * torch.exp(-(err - err.min(1, keepdim=True).values) / s.geometry_temp)
        w = torch.where(w.sum(1, keepdim=True) > 0, w, valid.double())
        pick = cand.gather(1, _inverse_cdf(w, u[:, t])[:, None])[:, 0]
        chosen[:, t] = torch.where(live, pick, 0)
        blocked[rows[live], pick[live]] = True
        if tally is not None:
            tally.add(pick, live)
        if geometry:
            chosen_dirs[:, t] = unit[pick]
            if squares is not None:
                squares += ((unit[pick] @ unit.T) ** 2) * live[:, None]
    return chosen


def _cosine_error(unit, cand, chosen_dirs, target_cos, squares):
    """[B, C] e_j = mean over m < t of (cos(j, j_m) - cos(i_t, i_m))^2 for candidates `cand`: directly for a
    window of candidates; for every latent (`squares` given) by expanding the square, one matmul per slot."""
    t = chosen_dirs.shape[1]
    if squares is None:
        cos = torch.einsum("bcd,bmd->bcm", unit[cand], chosen_dirs)
        return ((cos - target_cos[:, None, :]) ** 2).mean(-1).double()
    pulled = torch.einsum("bm,bmd->bd", target_cos, chosen_dirs)
    const = (target_cos**2).sum(-1, keepdim=True)
    return ((squares - 2 * pulled @ unit.T).gather(1, cand) + const).double() / t


def code_cooccurrence(ctx: GenContext, lat: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """[B, K] for each template latent, the sum of count(u, i) over the other latents u of its code."""
    b, k = lat.shape
    tally = _Tally(_table(ctx, s, lat.device), ctx.stats.freq, b, lat.device)
    for t in range(k):
        tally.add(lat[:, t].clamp(min=0), lat[:, t] >= 0)
    ids = lat.clamp(min=0)
    # A truncated latent's own chance count with itself is not a pair of two latents.
    f = tally.freq[ids]
    own = torch.where(tally.table.truncated[ids] & (lat >= 0), f * f * tally.table.n_codes, 0.0)
    return tally.weights(ids) - own


def swapped(ctx: GenContext, lat, values, u, s: GenerationSettings) -> torch.Tensor:
    """control_swapped: see the module docstring."""
    device = lat.device
    b, k = lat.shape
    rows = torch.arange(b, device=device)
    live = lat >= 0
    score = code_cooccurrence(ctx, lat, s)
    score = score if s.swap_order == "least_cooccurring" else -score
    order = torch.sort(torch.where(live, score, math.inf), dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(k, device=device).expand(b, k).contiguous())
    swap = live & (rank < s.swaps)
    blocked = _blocked(ctx, lat, True)
    chosen = lat.clamp(min=0).clone()
    for t in range(k):
        near, count = _nearest_in_frequency(ctx, lat[:, t].clamp(min=0), blocked, s.nearest_k, 2 * k)
        _check_found(count[swap[:, t]] > 0)
        pick = near[rows, (u[:, t] * count.clamp(min=1)).long().clamp(max=s.nearest_k - 1)]
        here = swap[:, t]
        chosen[:, t] = torch.where(here, pick, chosen[:, t])
        blocked[rows[here], pick[here]] = True
    return chosen


def by_rank(drawn: torch.Tensor, template_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The drawn values [B, K] reassigned so that their order follows the template's values (largest to the
    slot of the template's largest); padding stays last."""
    low = torch.tensor(-math.inf, device=drawn.device)
    sorted_drawn = torch.sort(torch.where(mask, drawn, low), dim=1, descending=True).values
    slots = torch.sort(torch.where(mask, template_values, low), dim=1, descending=True, stable=True).indices
    return torch.zeros_like(drawn).scatter_(1, slots, torch.where(torch.isinf(sorted_drawn), 0.0, sorted_drawn))


def permuted(template_values: torch.Tensor, mask: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """The template's values permuted among the code's latents by the value uniforms uv [B, K]."""
    perm = torch.argsort(torch.where(mask, uv, math.inf), dim=1, stable=True)
    return template_values.gather(1, perm) * mask


def other_codes(lat: torch.Tensor, other_z: torch.Tensor, exclude_template: bool) -> torch.Tensor:
    """Another prompt's dense SAE codes [B, d_sae], less the template latents `lat` [B, K] (-1 = padding) with
    `exclude_template`."""
    if not exclude_template:
        return other_z
    d_sae = other_z.shape[1]
    z = torch.cat([other_z, torch.zeros_like(other_z[:, :1])], 1)  # column d_sae absorbs padding
    return z.scatter(1, torch.where(lat >= 0, lat, d_sae), 0.0)[:, :d_sae]


def other_latents(lat: torch.Tensor, values: torch.Tensor, other_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """control_other_latents (see the module docstring) on the other codes `other_z` [B, d_sae] (from
    other_codes): (chosen [B, K], kept [B, K]), slot t of the template carrying its value to chosen[:, t] where
    kept."""
    b, k = lat.shape
    live = lat >= 0
    low = torch.tensor(-math.inf, device=lat.device)
    ranked = torch.sort(torch.where(other_z != 0, other_z.float(), low), dim=1, descending=True, stable=True)
    top, present = ranked.indices[:, :k], torch.isfinite(ranked.values[:, :k])
    slots = torch.sort(torch.where(live, values, low), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(slots).scatter_(1, slots, torch.arange(k, device=lat.device).expand(b, k).contiguous())
    kept = live & present.gather(1, rank)
    return torch.where(kept, top.gather(1, rank), 0), kept
