"""Exact co-occurrence counts of a part of the reference pool, sparse (docs/science.md, "Beyond the paper: the
ladder").

count(u, j) is the number of codes of the part in which latents u and j both fire. It is counted from the codes
themselves: every code of L0 k gives its k (k - 1) ordered pairs, so the cost is of the order of the part's
codes x L0^2 and the memory of the order of the number of distinct co-firing pairs, whatever d_sae is; no
[d_sae, anything] matrix is ever built. Every partner is kept (no top-m list, no chance fill): a pair that never
co-fired has count 0. The table is stored by latent (CSR: `indptr`, `partners` ascending within a latent, their
`counts`); `count(u, j)` looks pairs up by binary search.

Two parts of one pool have two tables (stats.part_range): the statistics part (what R3 draws from and
control_swapped orders by) and the held-out part (what the diagnostics count against); each is built once per
statistics object and cached on it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from synthact.generation.stats import ReferenceStats, part_range

PAIRS_PER_CHUNK = 1 << 22  # ordered pairs expanded at once while counting (bounds the memory of the count)


@dataclass
class Cooccurrence:
    """count(u, j) for every pair of latents that fired together in `n_codes` codes of the pool (CSR by latent)."""

    n_codes: int  # codes of the part that built the table
    indptr: torch.Tensor  # [d_sae + 1] int64: latent u's partners are partners[indptr[u]:indptr[u + 1]]
    partners: torch.Tensor  # [pairs] int64, ascending within a latent
    counts: torch.Tensor  # [pairs] float64, count(u, partner) > 0
    fires: torch.Tensor  # [d_sae] float64, codes of the part in which each latent fires

    @property
    def d_sae(self) -> int:
        return self.fires.shape[0]

    @functools.cached_property
    def keys(self) -> torch.Tensor:
        """[pairs] int64 u * d_sae + partner, ascending: what `count` searches."""
        rows = torch.repeat_interleave(torch.arange(self.d_sae, device=self.indptr.device), self.indptr.diff())
        return rows * self.d_sae + self.partners

    def count(self, u: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """count(u, j) (float64, broadcast over u and j); 0 where u or j is negative (padding) or u == j."""
        u, j = torch.broadcast_tensors(u.long(), j.long())
        key = (u.clamp(min=0) * self.d_sae + j.clamp(min=0)).contiguous()
        if self.keys.numel() == 0:
            return torch.zeros(key.shape, dtype=torch.float64, device=key.device)
        pos = torch.searchsorted(self.keys, key).clamp(max=self.keys.numel() - 1)
        found = (self.keys[pos] == key) & (u >= 0) & (j >= 0)
        return torch.where(found, self.counts[pos], 0.0)

    def rows(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The partner lists of `latents` [n] (int64, >= 0), concatenated: (which of the n each entry belongs to,
        partner ids, counts)."""
        start = self.indptr[latents]
        length = self.indptr[latents + 1] - start
        owner = torch.repeat_interleave(torch.arange(latents.shape[0], device=latents.device), length)
        first = torch.cumsum(length, 0) - length
        pos = start[owner] + torch.arange(owner.shape[0], device=latents.device) - first[owner]
        return owner, self.partners[pos], self.counts[pos]


def cooccurrence(stats: ReferenceStats, holdout: float, part: str = "statistics") -> Cooccurrence:
    """The co-occurrence table of one part of the pool ("statistics" or "heldout", stats.part_range), built on the
    statistics' device once per (holdout, part) and cached on `stats`."""
    cache = stats.__dict__.setdefault("_cooccurrence", {})
    if (holdout, part) not in cache:
        start, stop = part_range(stats.n, holdout, part)
        cache[holdout, part] = count_pairs(stats.code_offsets, stats.code_latents, start, stop, stats.d_sae)
    return cache[holdout, part]


@torch.no_grad()
def count_pairs(offsets: torch.Tensor, latents: torch.Tensor, start: int, stop: int, d_sae: int,
                chunk: int = PAIRS_PER_CHUNK) -> Cooccurrence:
    """The table of codes [start, stop) of CSR codes (`offsets` [P + 1], `latents` [nnz]; a code's latents are
    distinct), counting about `chunk` ordered pairs at a time."""
    device = latents.device
    lengths = (offsets[start + 1: stop + 1] - offsets[start:stop]).long()
    ends = torch.cumsum(lengths * lengths, 0)
    keys = torch.zeros(0, dtype=torch.int64, device=device)
    counts = torch.zeros(0, dtype=torch.int64, device=device)
    pending, first = [], 0
    while first < lengths.shape[0]:
        done = int(ends[first - 1]) if first else 0
        last = max(int(torch.searchsorted(ends, done + chunk, right=True)), first + 1)
        pending.append(_chunk_keys(offsets[start + first: start + last], lengths[first:last], latents, d_sae))
        first = last
        if first == lengths.shape[0] or sum(k.shape[0] for k, _ in pending) > max(keys.shape[0], chunk):
            keys, counts = _merge([(keys, counts), *pending])  # amortized: pending outgrows what is merged
            pending = []
    fires = torch.bincount(latents[offsets[start]: offsets[stop]].long(), minlength=d_sae).double()
    indptr = torch.zeros(d_sae + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(torch.bincount(keys // d_sae, minlength=d_sae), 0)
    return Cooccurrence(stop - start, indptr, keys % d_sae, counts.double(), fires)


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct keys of (keys, counts) parts, ascending, with their counts summed."""
    keys, inverse = torch.unique(torch.cat([k for k, _ in parts]), return_inverse=True)
    counts = torch.zeros(keys.shape[0], dtype=torch.int64, device=keys.device)
    return keys, counts.scatter_add_(0, inverse, torch.cat([c for _, c in parts]))


def _chunk_keys(starts: torch.Tensor, lengths: torch.Tensor, latents: torch.Tensor, d_sae: int):
    """(distinct keys u * d_sae + j, their counts) over the ordered pairs u != j of the codes starting at `starts`."""
    device = latents.device
    pairs = lengths * lengths
    code = torch.repeat_interleave(torch.arange(lengths.shape[0], device=device), pairs)
    k = torch.arange(code.shape[0], device=device) - (torch.cumsum(pairs, 0) - pairs)[code]
    width = lengths[code]
    left, right = starts[code] + k // width, starts[code] + k % width
    keep = left != right
    u, j = latents[left[keep]].long(), latents[right[keep]].long()
    return torch.unique(u * d_sae + j, return_counts=True)
