"""Diagnostics of SAE codes: does each rung of the ladder match the statistics of real codes it claims to?
(docs/science.md, "Beyond the paper: the ladder").

Per code (a built target's code, or the SAE code of any other target), computed on the worker from the code
alone, before any scan, and stored in the code's result row:
- `target_l0` (already a column): active latents;
- `target_log_freq`: mean log10 firing frequency of its latents (dead latents count as 0.5 / pool size);
- `target_pmi`: mean over the pairs of its latents of log2(count(u, j) N / (n_u n_j)), counts and firing
  counts n from the statistics part of the pool (N codes; below 1 they count as 0.5); a pair's count is the
  stored one (from either latent's top-m partners), 0 where either latent's partner list is complete and
  lacks the other, else the chance count n_u n_j / N (PMI 0);
- `target_pair_cos`: mean decoder cosine over its pairs; `target_top_cos`: mean cosine of its other latents
  to its top latent (largest value);
- `target_top_share`: the top latent's share of the sum of values; `target_mean_value`: mean value;
- `target_distance` (already a column): ||T - A||.
The held-out part of the pool gives the same numbers for real codes never used by the statistics
(`heldout_codes`). Reading them back, per cell, is analysis/diagnostics.py's.
"""

from __future__ import annotations

import math

import numpy as np

# The diagnostic columns a result row carries (results.DIAGNOSTICS), besides target_l0 and target_distance.
COLUMNS = ("target_log_freq", "target_pmi", "target_pair_cos", "target_top_cos", "target_top_share",
           "target_mean_value")
CHUNK = 64  # codes per block of the pair lookup: memory O(CHUNK * K^2 * m)


def code_diagnostics(latents: list[np.ndarray], values: list[np.ndarray], ctx, top_m: int = 64,
                     holdout: float = 0.25) -> dict[str, np.ndarray]:
    """COLUMNS for each code (latent ids, values); NaN where a code has too few latents for a number."""
    import torch

    from synthact.generation.stats import cooccurrence

    stats = ctx.stats
    table = cooccurrence(stats, top_m, holdout)
    device = table.partners.device
    n = len(latents)
    k = max([len(x) for x in latents] + [1])
    lat = torch.full((n, k), -1, dtype=torch.long)
    val = torch.zeros(n, k)
    for b, (ids, v) in enumerate(zip(latents, values)):
        lat[b, : len(ids)] = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        val[b, : len(ids)] = torch.as_tensor(np.asarray(v, dtype=np.float32))
    lat, val = lat.to(device), val.to(device)
    live = lat >= 0
    ids = lat.clamp(min=0)
    l0 = live.sum(1).double()
    freq = stats.freq.to(device).double()[ids]
    freq = torch.where(freq > 0, freq, 0.5 / stats.n)
    log_freq = torch.where(live, torch.log10(freq), 0.0).sum(1) / l0
    unit = torch.nn.functional.normalize(ctx.sae.W_dec.detach().float().to(device), dim=-1)[ids]
    cos = unit @ unit.transpose(1, 2)
    pair = live[:, :, None] & live[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=device)
    n_pairs = pair.sum((1, 2)).double()
    pair_cos = torch.where(pair, cos, 0.0).sum((1, 2)) / n_pairs
    top = torch.where(live, val, -math.inf).argmax(1)
    others = live.clone()
    others[torch.arange(n, device=device), top] = False
    top_cos = torch.where(others, cos[torch.arange(n, device=device), top], 0.0).sum(1) / others.sum(1)
    top_share = val.max(1).values / torch.where(live, val, 0.0).sum(1)
    pmi = torch.cat([_pmi(table, ids[s: s + CHUNK], pair[s: s + CHUNK]) for s in range(0, n, CHUNK)]).to(device)
    out = {
        "target_log_freq": log_freq, "target_pmi": torch.where(n_pairs > 0, pmi.sum((1, 2)) / n_pairs, math.nan),
        "target_pair_cos": pair_cos, "target_top_cos": top_cos, "target_top_share": top_share,
        "target_mean_value": torch.where(live, val, 0.0).sum(1) / l0,
    }
    return {name: out[name].double().cpu().numpy() for name in COLUMNS}


def _pmi(table, ids, pair):
    """[B, K, K] log2 PMI of each pair of latents of the codes `ids` (zero outside `pair`)."""
    import torch

    partners, counts = table.partners[ids], table.counts[ids].double()  # [B, K, m]
    # found[b, u, j, :] marks where j sits among u's partners
    found = partners[:, :, None, :] == ids[:, None, :, None]
    from_u = torch.where(found, counts[:, :, None, :], 0.0).sum(-1)
    stored = torch.maximum(from_u, from_u.transpose(1, 2))
    listed = found.any(-1)
    listed = listed | listed.transpose(1, 2)
    complete = ~table.truncated[ids]
    known = listed | complete[:, :, None] | complete[:, None, :]
    fires = table.fires.double()[ids].clamp(min=0.5)
    expected = fires[:, :, None] * fires[:, None, :] / table.n_codes
    count = torch.where(known, stored, expected).clamp(min=0.5)
    return torch.where(pair, torch.log2(count / expected), 0.0)


def target_columns(target, ctx, settings=None) -> dict[str, np.ndarray | None]:
    """COLUMNS of a batch of targets' built codes (or their SAE codes); None without targets."""
    if target is None:
        return dict.fromkeys(COLUMNS)
    return code_diagnostics(*_codes(target, ctx), ctx, *_table_settings(settings))


def _table_settings(settings) -> tuple[int, float]:
    return (settings.cooccur_top_m, settings.holdout) if settings is not None else (64, 0.25)


def _codes(target, ctx) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The built codes of a batch of targets, or their SAE codes."""
    import torch

    if target.latents is not None:
        return target.latents, target.values
    with torch.no_grad():
        z = ctx.sae.encode(target.vectors.to(ctx.sae.W_dec.dtype)).float().cpu()
    latents = [torch.nonzero(row).flatten().numpy() for row in z]
    return latents, [row[torch.as_tensor(ids, dtype=torch.long)].numpy() for row, ids in zip(z, latents)]


def heldout_codes(stats, holdout: float = 0.25) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The latent ids and values of the pool's held-out codes (its last round(holdout * P)): real codes that
    never informed the co-occurrence statistics."""
    from synthact.generation.stats import split_pool

    offsets = stats.code_offsets.cpu().numpy()
    lat, val = stats.code_latents.cpu().numpy(), stats.code_values.cpu().numpy()
    rows = range(split_pool(stats.n, holdout), stats.n)
    return [lat[offsets[i]: offsets[i + 1]] for i in rows], [val[offsets[i]: offsets[i + 1]] for i in rows]
