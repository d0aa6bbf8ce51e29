"""The ladder beyond the paper: replacement latents weighted by co-occurrence and kept decoder cosines,
values from each latent's own distribution, and the swapped-code controls (docs/science.md, "Beyond the paper:
the ladder").

Like matching.py, each construction takes the padded template codes `lat [B, K]` (-1 = padding) on the
worker's device and returns the replacements `[B, K]`, one batched step per code slot; randomness comes
in as one uniform per slot, drawn per base.

- `cooccur` (kind synthetic_cooccur, rungs R3 / R4 and their 2 x 2 with R1 / geometry alone): slot by slot,
  in ascending template id, among the candidates (`cooccur_window`: "all", every allowed alive latent;
  "nearest_k", the `nearest_k` allowed latents nearest to i_t in frequency; "anchor", the partners of the anchor
  construction's anchor, the window of the authors' select_features_challenger, whose fallback is kept too: a code
  with no more of them than latents is the anchor construction), draw j with probability proportional to
      w_j = [sum over the latents u already chosen of count(u, j)]^p  (`cooccur` "counts", p `cooccur_power`;
                                                                     1 with "none")
            * exp(-(e_j - min e) / geometry_temp)                   (`geometry_temp` > 0)
  where e_j = mean over m < t of (cos(j, j_m) - cos(i_t, i_m))^2 is the error in kept decoder cosines.
  count(u, j) is the exact count of the statistics part of the pool (cooccurrence.py: every partner, 0 for a
  pair that never fired together); the sums are kept sparse, on the union of the chosen latents' partner lists.
  Where no candidate has weight (the first slot, or no co-occurrence mass in the window) the draw is uniform
  over the candidates, so with `cooccur` "none" and no geometry the "nearest_k" window is the paper's baseline
  (R1) draw for draw, and the "anchor" window the challenger's uniform sample of the anchor's partners.
- values (value_source): `quantile` (R5) gives j_t the value at i_t's quantile: q_t, the randomized quantile of
  the template value v_t among i_t's values in the statistics part (values.py; a uniform where i_t has none
  there), then j_t's floor(q_t n_j)-th smallest value there, so that each latent's value comes from its own
  distribution while the code keeps the template's strong and weak slots (j_t without values keeps v_t);
  `permuted` permutes the template's values among the code's latents (a control).
- `swapped` (kind control_swapped): the template's code with `swaps` of its latents replaced as the
  baseline replaces them (frequency-matched, never a template latent), the latents that co-occur most
  (`swap_order` most_cooccurring) or least with the rest of the code first; the rest are kept, and every
  value is the template's (controls take value_source template or permuted only).
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

from synthact.generation.codes import Codes
from synthact.generation.context import GenContext, GenerationSettings
from synthact.generation.cooccurrence import Cooccurrence, cooccurrence
from synthact.generation.matching import (
    _blocked,
    _check_found,
    _nearest_in_frequency,
    anchor,
    anchor_latents,
    cosines_to_all,
    unit_rows,
)
from synthact.generation.values import latent_values


class _Mass:
    """For each row of a batch, sum over the latents u added so far of count(u, j), kept where it is positive:
    the union of their partner lists, as ascending keys row * d_sae + j and their sums."""

    def __init__(self, table: Cooccurrence, rows: int, device):
        self.table, self.rows, self.d_sae = table, rows, table.d_sae
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.mass = torch.zeros(0, dtype=torch.float64, device=device)

    def add(self, latent: torch.Tensor, live: torch.Tensor) -> None:
        """Add latent[b]'s partner list to row b where live[b]."""
        rows = torch.nonzero(live).flatten()
        owner, partners, counts = self.table.rows(latent[rows])
        self.keys, inverse = torch.unique(torch.cat([self.keys, rows[owner] * self.d_sae + partners]),
                                          return_inverse=True)
        self.mass = torch.zeros(self.keys.shape[0], dtype=torch.float64, device=self.keys.device).scatter_add_(
            0, inverse, torch.cat([self.mass, counts]))

    def weights(self, cand: torch.Tensor) -> torch.Tensor:
        """[B, C] the sums of candidates `cand` [B, C] (ids >= 0)."""
        if self.keys.numel() == 0:
            return torch.zeros(cand.shape, dtype=torch.float64, device=cand.device)
        key = (torch.arange(cand.shape[0], device=cand.device)[:, None] * self.d_sae + cand).contiguous()
        pos = torch.searchsorted(self.keys, key).clamp(max=self.keys.numel() - 1)
        return torch.where(self.keys[pos] == key, self.mass[pos], 0.0)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, U], sums [B, U]): each row's latents with a positive sum, ascending, padded with id 0, sum 0."""
        ids = _pad(self.keys // self.d_sae, self.keys % self.d_sae, self.rows, 0)
        return ids, _pad(self.keys // self.d_sae, self.mass, self.rows, 0.0)


def _pad(row: torch.Tensor, values: torch.Tensor, rows: int, fill) -> torch.Tensor:
    """[rows, U] the `values` of each row (`row` ascending), in order, padded with `fill` (U >= 1)."""
    per_row = torch.bincount(row, minlength=rows)
    width = max(int(per_row.max()) if rows else 0, 1)
    slot = torch.arange(row.shape[0], device=row.device) - (torch.cumsum(per_row, 0) - per_row)[row]
    out = torch.full((rows, width), fill, dtype=values.dtype, device=values.device)
    out[row, slot] = values
    return out


def _table(ctx: GenContext, s: GenerationSettings, device) -> Cooccurrence:
    t = cooccurrence(ctx.stats, s.holdout, "statistics")
    if t.indptr.device == torch.device(device):
        return t
    return Cooccurrence(t.n_codes, t.indptr.to(device), t.partners.to(device), t.counts.to(device), t.fires.to(device))


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
    is_alive = ctx.stats.freq.to(device) > 0
    blocked = _blocked(ctx, lat, s.exclude_template)
    table = _table(ctx, s, device) if s.cooccur == "counts" or s.cooccur_window == "anchor" else None
    mass = _Mass(table, b, device) if s.cooccur == "counts" else None
    geometry = s.geometry_temp > 0
    window, fallback = None, torch.zeros(b, dtype=torch.bool, device=device)
    if s.cooccur_window == "anchor":  # the challenger's: the anchor's partners, if they outnumber the code
        _, anchor_ids = anchor_latents(ctx, lat, values, blocked, s)
        owner, partners, _ = table.rows(anchor_ids)
        window = _pad(owner, partners, b, -1)
        allowed = (window >= 0) & ~blocked(window.clamp(min=0)) & is_alive[window.clamp(min=0)]
        fallback = allowed.sum(1) <= (lat >= 0).sum(1)
    # Every alive latent a candidate, no geometry: the weights live on the chosen latents' partners only.
    sparse = mass is not None and not geometry and s.cooccur_window == "all"
    if geometry:
        wt = unit_rows(ctx.sae, lat.clamp(min=0))
        target_cos = wt @ wt.transpose(1, 2)  # [B, K, K]
        chosen_dirs = torch.zeros(b, k, wt.shape[2], device=device)
        # sum over the chosen j_m of cos(., j_m)^2, for every latent: only where every latent is a candidate
        squares = torch.zeros(b, ctx.sae.W_dec.shape[0], device=device) if s.cooccur_window == "all" else None
    chosen = torch.zeros_like(lat).clamp(min=0)
    for t in range(k):
        live = (lat[:, t] >= 0) & ~fallback
        i_t = lat[:, t].clamp(min=0)
        if sparse:
            cand, w = mass.padded()
            w = w ** s.cooccur_power * (~blocked(cand) & (cand != i_t[:, None]) & is_alive[cand])
        else:
            cand, valid = _candidates(ctx, s, i_t, blocked, alive, 2 * k, window)
            _check_found(valid.any(1)[live])
            w = valid.double()
            if mass is not None:
                w = w * mass.weights(cand) ** s.cooccur_power
            if geometry and t > 0:
                err = torch.where(valid, _cosine_error(ctx.sae, cand, chosen_dirs[:, :t], target_cos[:, t, :t], squares),
                                  math.inf)
                w = w * torch.exp(-(err - err.min(1, keepdim=True).values) / s.geometry_temp)
        pick = cand.gather(1, _inverse_cdf(w, u[:, t])[:, None])[:, 0]
        flat = torch.nonzero(live & ~(w.sum(1) > 0)).flatten()  # no weight (NaN included): uniform over candidates
        if flat.numel() and s.cooccur_window == "all":
            pick[flat] = _uniform_alive(i_t[flat], blocked.select(flat), alive, u[flat, t])
        elif flat.numel():
            cand, valid = _candidates(ctx, s, i_t[flat], blocked.select(flat), alive, 2 * k,
                                      window[flat] if window is not None else None)
            _check_found(valid.any(1))
            pick[flat] = cand.gather(1, _inverse_cdf(valid.double(), u[flat, t])[:, None])[:, 0]
        chosen[:, t] = torch.where(live, pick, 0)
        blocked.add(rows[live], pick[live])
        if mass is not None:
            mass.add(pick, live)
        if geometry:
            chosen_dirs[:, t] = unit_rows(ctx.sae, pick)
            if squares is not None:
                squares += (cosines_to_all(ctx.sae, chosen_dirs[:, t]) ** 2) * live[:, None]
    if bool(fallback.any()):  # as the challenger: the anchor construction where the anchor has too few partners
        chosen[fallback] = anchor(ctx, lat[fallback], values[fallback], u[fallback], s)
    return chosen


def _uniform_alive(i_t: torch.Tensor, blocked, alive: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[n] per row, the alive latent drawn uniformly by `u` [n] among those neither blocked nor i_t: the draw of
    `_inverse_cdf` over every alive latent with weight 1 where allowed (the (floor(u T) + 1)-th allowed one in id
    order, T of them), found from the few excluded latents alone, without a [n, alive] weight."""
    n, size = i_t.shape[0], alive.shape[0]
    padded = torch.cat([blocked.padded(), i_t[:, None]], 1)  # [n, M] latents excluded, -1 padding
    pos = torch.searchsorted(alive, padded.clamp(min=0).contiguous()).clamp(max=size - 1)
    hit = (padded >= 0) & (alive[pos] == padded)  # excluded latents that are alive, as positions in `alive`
    row = torch.arange(n, device=i_t.device)[:, None].expand_as(pos)
    keys = torch.unique(row[hit] * size + pos[hit])  # per row, distinct excluded positions ascending
    key_row, key_pos = keys // size, keys % size
    per_row = torch.bincount(key_row, minlength=n)
    first = torch.cumsum(per_row, 0) - per_row
    allowed = size - per_row
    _check_found(allowed > 0)
    m = torch.floor(u.double() * allowed.double()).long()
    # position of the m-th allowed latent: m plus the excluded positions e_r (r-th of its row) with e_r - r <= m
    shifted = key_row * (size + 1) + key_pos - (torch.arange(keys.shape[0], device=i_t.device) - first[key_row])
    below = torch.searchsorted(shifted, (torch.arange(n, device=i_t.device) * (size + 1) + m).contiguous(), right=True)
    return alive[(m + below - first).clamp(max=size - 1)]


def _candidates(ctx: GenContext, s: GenerationSettings, i_t, blocked, alive, reach, window=None):
    """(candidates [B, C], which of them are allowed [B, C]) of one slot: the nearest_k allowed latents nearest to
    i_t in frequency; every alive latent (`cooccur_window` all); or the latents of `window` [B, U] (-1 pads: the
    anchor's partners); never i_t nor a blocked latent."""
    if s.cooccur_window == "nearest_k":
        cand, count = _nearest_in_frequency(ctx, i_t, blocked, s.nearest_k, reach)
        return cand.clamp(min=0), torch.arange(cand.shape[1], device=cand.device)[None] < count[:, None]
    if window is not None:
        cand = window.clamp(min=0)
        return cand, (window >= 0) & ~blocked(cand) & (cand != i_t[:, None]) & (ctx.stats.freq.to(
            cand.device)[cand] > 0)
    cand = alive[None].expand(i_t.shape[0], -1)
    return cand, ~blocked(cand) & (cand != i_t[:, None])


def _cosine_error(sae, cand, chosen_dirs, target_cos, squares):
    """[B, C] e_j = mean over m < t of (cos(j, j_m) - cos(i_t, i_m))^2 for candidates `cand`: directly for a
    window of candidates; for every latent (`squares` given) by expanding the square, one matmul per slot."""
    t = chosen_dirs.shape[1]
    if squares is None:
        cos = torch.einsum("bcd,bmd->bcm", unit_rows(sae, cand), chosen_dirs)
        return ((cos - target_cos[:, None, :]) ** 2).mean(-1).double()
    pulled = torch.einsum("bm,bmd->bd", target_cos, chosen_dirs)
    const = (target_cos**2).sum(-1, keepdim=True)
    return ((squares - 2 * cosines_to_all(sae, pulled)).gather(1, cand) + const).double() / t


def code_cooccurrence(ctx: GenContext, lat: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """[B, K] for each template latent, the sum of count(u, i) over the other latents u of its code (statistics
    part of the pool, exact)."""
    table = _table(ctx, s, lat.device)
    return table.count(lat[:, :, None], lat[:, None, :]).sum(2)


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
        blocked.add(rows[here], pick[here])
    return chosen


def quantile_values(ctx: GenContext, lat, template_values, chosen, uv, s: GenerationSettings) -> torch.Tensor:
    """value_source quantile (R5): each j_t's value at i_t's quantile (see the module docstring), [B, K]; the value
    uniforms uv [B, K] randomize the template value's quantile among ties and between its neighbours."""
    table = latent_values(ctx.stats, s.holdout, "statistics")
    q = table.quantile(lat.clamp(min=0), template_values, uv)
    q = torch.where(torch.isnan(q), uv.double(), q)  # i_t never fired at the statistics part's last positions
    drawn = table.at_quantile(chosen, q)
    return torch.where(torch.isnan(drawn), template_values, drawn)


def permuted(template_values: torch.Tensor, mask: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """The template's values permuted among the code's latents by the value uniforms uv [B, K]."""
    perm = torch.argsort(torch.where(mask, uv, math.inf), dim=1, stable=True)
    return template_values.gather(1, perm) * mask


def other_codes(lat: torch.Tensor, other: Codes, exclude_template: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Another prompt's SAE codes as (latents [B, M] ascending, -1 padding; values [B, M]), M >= K, less the template
    latents `lat` [B, K] (-1 = padding) with `exclude_template` (their slots become padding)."""
    ids, values = other.padded(width=lat.shape[1])
    if exclude_template:
        ids = torch.where((ids[:, :, None] == torch.where(lat >= 0, lat, -2)[:, None, :]).any(-1), -1, ids)
    return ids, torch.where(ids >= 0, values, 0.0)


def other_latents(lat: torch.Tensor, values: torch.Tensor, other: tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """control_other_latents (see the module docstring) on the other codes (from other_codes): (chosen [B, K],
    kept [B, K]), slot t of the template carrying its value to chosen[:, t] where kept."""
    b, k = lat.shape
    ids, other_values = other
    live = lat >= 0
    low = torch.tensor(-math.inf, device=lat.device)
    ranked = torch.sort(torch.where(ids >= 0, other_values.float(), low), dim=1, descending=True, stable=True)
    top, present = ids.gather(1, ranked.indices[:, :k]), torch.isfinite(ranked.values[:, :k])
    slots = torch.sort(torch.where(live, values, low), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(slots).scatter_(1, slots, torch.arange(k, device=lat.device).expand(b, k).contiguous())
    kept = live & present.gather(1, rank)
    return torch.where(kept, top.gather(1, rank), 0), kept
