"""Diagnostics of SAE codes: does each rung of the ladder match the statistics of real codes it claims to?
(docs/science.md, "Beyond the paper: the ladder").

Per code (a built target's code, or the SAE code of any other target), computed on the worker from the code
alone, before any scan, and stored in the code's result row. Every count comes from the HELD-OUT part of the
reference pool (its last `holdout` of codes, N of them; stats.part_range), which no construction draws from:
- `target_l0` (already a column): active latents;
- `target_log_freq`: mean log10 firing frequency of its latents (dead latents count as 0.5 / pool size);
- `target_pmi`: mean over the pairs {u, j} of its latents of log2(c(u, j) N / (n_u n_j)), c the exact count
  of held-out codes in which both fire, n_u those in which u fires (a count below 1 counts as 0.5);
- `target_cofire`: the fraction of those pairs that fire together in at least one held-out code (c > 0);
- `target_pair_cos`: mean decoder cosine over its pairs; `target_top_cos`: mean cosine of its other latents
  to its top latent (largest value);
- `target_cos_error`: for a code built from a template, mean over its pairs of
  (cos(j_t, j_m) - cos(i_t, i_m))^2, the error in the template's decoder cosines (null for other codes);
- `target_top_share`: the top latent's share of the sum of values; `target_mean_value`: mean value;
- `target_value_quantiles`: each value's randomized quantile within its latent's held-out values
  (values.LatentValues.quantile, uniforms from the row's target seed; null where the latent has none): real
  codes give uniform quantiles, so their KS against uniform (read back per cell) tests each latent's values;
- `target_distance` (already a column): ||T - A||.
A code with fewer than two latents has no pair statistics (NaN). Real targets are SAE codes of fresh prompts,
drawn independently of the pool, so no code is counted against itself: the `toward:real` cell is the reference
each rung should approach. Reading them back, per cell, is analysis/diagnostics.py's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synthact.generation import codes
from synthact.generation.cooccurrence import cooccurrence
from synthact.generation.matching import unit_rows
from synthact.generation.values import latent_values
from synthact.spec import GenerationSpec, derive_seed

# The diagnostic columns a result row carries (results.ACTIVATIONS), besides target_l0 and target_distance.
COLUMNS = ("target_log_freq", "target_pmi", "target_cofire", "target_pair_cos", "target_cos_error", "target_top_cos",
           "target_top_share", "target_mean_value", "target_value_quantiles")
DEFAULT_HOLDOUT = GenerationSpec.model_fields["holdout"].default[0]  # for cells without the holdout axis
CHUNK = 64  # codes at a time: memory O(CHUNK * K^2 + CHUNK * K * d_model)


@torch.no_grad()
def code_diagnostics(latents: list[np.ndarray], values: list[np.ndarray], ctx, seeds: list[int],
                     holdout: float = DEFAULT_HOLDOUT, template_latents: list[np.ndarray] | None = None) -> dict:
    """COLUMNS for each code (latent ids, values; `seeds` one per code for its value quantiles; `template_latents`
    aligned with `latents` for codes built from a template): arrays, and for the quantiles one list per code (None
    where the latent has no held-out values)."""
    stats = ctx.stats
    counts = cooccurrence(stats, holdout, "heldout")
    held_values = latent_values(stats, holdout, "heldout")
    device = counts.indptr.device

    def unit(ids):
        return unit_rows(ctx.sae, ids.to(ctx.sae.W_dec.device)).to(device)

    parts, quantiles = [], []
    for s in range(0, len(latents), CHUNK):
        lat, val = _padded(latents[s: s + CHUNK], device), _padded(values[s: s + CHUNK], device, float)
        templ = _padded(template_latents[s: s + CHUNK], device) if template_latents is not None else None
        u = _padded([np.random.default_rng(derive_seed("value quantiles", seed)).random(len(ids))
                     for seed, ids in zip(seeds[s: s + CHUNK], latents[s: s + CHUNK])], device, float)
        parts.append(_chunk(lat, val, templ, u, stats, counts, held_values, unit))
        q = parts[-1].pop("target_value_quantiles").float().cpu().numpy()
        quantiles += [[None if x != x else float(x) for x in q[b, : len(ids)]]
                      for b, ids in enumerate(latents[s: s + CHUNK])]
    out = {name: torch.cat([p[name] for p in parts]).double().cpu().numpy() for name in COLUMNS[:-1]}
    return out | {"target_value_quantiles": quantiles}


def _chunk(lat, val, templ, u, stats, counts, held_values, unit) -> dict:
    n, k = lat.shape
    device = lat.device
    live = lat >= 0
    ids = lat.clamp(min=0)
    l0 = live.sum(1).double()
    freq = stats.freq.to(device).double()[ids]
    log_freq = torch.where(live, torch.log10(torch.where(freq > 0, freq, 0.5 / stats.n)), 0.0).sum(1) / l0
    cos = unit(ids) @ unit(ids).transpose(1, 2)
    pair = live[:, :, None] & live[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=device)
    n_pairs = pair.sum((1, 2)).double()

    def pair_mean(x):
        return torch.where(n_pairs > 0, torch.where(pair, x, 0.0).sum((1, 2)) / n_pairs, math.nan)

    cos_error = torch.full((n,), math.nan, dtype=torch.float64, device=device)
    if templ is not None:
        t_unit = unit(templ.clamp(min=0))
        cos_error = pair_mean(((cos - t_unit @ t_unit.transpose(1, 2)) ** 2).double())
    c = counts.count(lat[:, :, None], lat[:, None, :])
    fires = counts.fires.to(device)[ids].clamp(min=0.5)
    pmi = torch.log2(c.clamp(min=0.5) * counts.n_codes / (fires[:, :, None] * fires[:, None, :]))
    rows = torch.arange(n, device=device)
    top = torch.where(live, val, -math.inf).argmax(1)
    others = live.clone()
    others[rows, top] = False
    held_out = counts.n_codes > 0
    return {
        "target_log_freq": log_freq,
        "target_pmi": pair_mean(pmi) if held_out else torch.full((n,), math.nan, device=device),
        "target_cofire": pair_mean((c > 0).double()) if held_out else torch.full((n,), math.nan, device=device),
        "target_pair_cos": pair_mean(cos),
        "target_cos_error": cos_error,
        "target_top_cos": torch.where(others, cos[rows, top], 0.0).sum(1) / others.sum(1),
        "target_top_share": val.max(1).values / torch.where(live, val, 0.0).sum(1),
        "target_mean_value": torch.where(live, val, 0.0).sum(1) / l0,
        "target_value_quantiles": held_values.quantile(ids, val, u),
    }


def _padded(rows: list[np.ndarray], device, dtype=int) -> torch.Tensor:
    """Ragged rows as one [n, K] tensor: int64 padded with -1, or float32 padded with 0."""
    k = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), k), -1 if dtype is int else 0, np.int64 if dtype is int else np.float32)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return torch.as_tensor(out, device=device)


def target_columns(target, ctx, seeds: list[int], settings=None) -> dict:
    """COLUMNS of a batch of targets' built codes (or their SAE codes), `seeds` the targets' seeds; None without
    targets."""
    if target is None:
        return dict.fromkeys(COLUMNS)
    holdout = settings.holdout if settings is not None else DEFAULT_HOLDOUT
    out = code_diagnostics(*_codes(target, ctx), ctx, seeds, holdout, target.template_latents)
    return out if target.template_latents is not None else out | {"target_cos_error": None}  # no template: null


def _codes(target, ctx) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The built codes of a batch of targets, or their SAE codes."""
    if target.latents is not None:
        return target.latents, target.values
    return codes.encode(ctx.sae, target.vectors).lists()
