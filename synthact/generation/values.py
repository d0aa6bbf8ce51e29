"""Each latent's non-zero values in one part of the reference pool, sorted (CSR by latent), and the two maps
between values and quantiles that the ladder uses (docs/science.md, "Beyond the paper: the ladder"):

- `quantile(latent, value, u)`: the randomized quantile of `value` within the latent's n values,
  q = (#{values < value} + u (#{values == value} + 1)) / (n + 1), u uniform in [0, 1). When `value` is
  exchangeable with the latent's values, q is exactly uniform on [0, 1), whatever n (ties included): the
  value-quantile diagnostic tests this against uniform (on the held-out part).
- `at_quantile(latent, q)`: the latent's floor(q n)-th smallest value; for q uniform, a uniformly chosen
  one of its values (R5, `value_source: quantile`, on the statistics part).

Values at the pool's last positions only (what the pool's codes are); a latent that never fired there has
no values (n = 0). Built once per (holdout, part) and cached on the statistics object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from synthact.generation.stats import ReferenceStats, part_range


@dataclass
class LatentValues:
    """The non-zero values of each latent in a part of the pool, ascending within a latent."""

    indptr: torch.Tensor  # [d_sae + 1] int64
    values: torch.Tensor  # [nnz] float32, ascending within a latent
    levels: torch.Tensor  # [distinct] float32, the part's distinct values, ascending
    keys: torch.Tensor  # [nnz] int64, ascending: latent * (distinct + 1) + the value's index in `levels`

    def n(self, latent: torch.Tensor) -> torch.Tensor:
        """How many values each latent has (int64, latent >= 0)."""
        return self.indptr[latent + 1] - self.indptr[latent]

    def quantile(self, latent: torch.Tensor, value: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The randomized quantile (float64) of `value` within `latent`'s values, by uniforms `u`; NaN where the
        latent has no values."""
        latent = latent.long()
        n = self.n(latent)
        below = self._count(latent, value, right=False)
        ties = self._count(latent, value, right=True) - below
        q = (below + u.double() * (ties + 1)) / (n + 1)
        return torch.where(n > 0, q, torch.nan)

    def at_quantile(self, latent: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The floor(q n)-th smallest value of each latent (float32); NaN where it has none."""
        latent = latent.long()
        n = self.n(latent)
        if self.values.numel() == 0:
            return torch.full(latent.shape, torch.nan, device=latent.device)
        pos = self.indptr[latent] + torch.minimum((q * n).long(), (n - 1).clamp(min=0))
        return torch.where(n > 0, self.values[pos.clamp(max=self.values.shape[0] - 1)], torch.nan)

    def _count(self, latent: torch.Tensor, value: torch.Tensor, right: bool) -> torch.Tensor:
        """#{latent's values < value} (or <= value with `right`), by one binary search over `keys`."""
        level = torch.searchsorted(self.levels, value.float().contiguous(), right=right)  # distinct values below
        query = latent * (self.levels.shape[0] + 1) + level
        return torch.searchsorted(self.keys, query.contiguous()) - self.indptr[latent]


def latent_values(stats: ReferenceStats, holdout: float, part: str) -> LatentValues:
    """The values of each latent in one part of the pool (stats.part_range), built once and cached on `stats`."""
    cache = stats.__dict__.setdefault("_latent_values", {})
    if (holdout, part) not in cache:
        start, stop = part_range(stats.n, holdout, part)
        a, b = int(stats.code_offsets[start]), int(stats.code_offsets[stop])
        latents, values = stats.code_latents[a:b].long(), stats.code_values[a:b].float()
        by_value = torch.argsort(values, stable=True)
        order = by_value[torch.argsort(latents[by_value], stable=True)]
        latents, values = latents[order], values[order]
        levels, ranks = torch.unique(values, sorted=True, return_inverse=True)
        indptr = torch.zeros(stats.d_sae + 1, dtype=torch.int64, device=latents.device)
        indptr[1:] = torch.cumsum(torch.bincount(latents, minlength=stats.d_sae), 0)
        cache[holdout, part] = LatentValues(indptr, values, levels, latents * (levels.shape[0] + 1) + ranks)
    return cache[holdout, part]
