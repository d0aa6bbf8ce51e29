"""SAE codes as indices and values (docs/design.md, "sparse all the way").

`encode` runs an SAE on activations in batches sized from a memory budget: only one batch's dense
[rows, d_sae] code exists at a time, and what comes back is sparse (CSR rows: latent ids ascending, their
values), so the memory of encoding grows with the codes' non-zeros, not with how many activations times
d_sae. `decode` is the SAE's own decoder on such codes, rebuilt dense one bounded batch at a time (so its
numbers are the decoder's numbers on the dense code).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ENCODE_BUDGET_BYTES = 256 << 20  # the dense part of one encoding batch (pre-activations, code, mask)
DENSE_COPIES = 3  # dense [rows, d_sae] float32 tensors alive at once while one batch is encoded


def batch_rows(d_sae: int, budget: int | None = None) -> int:
    """Activations encoded at once so that the batch's dense codes fit in `budget` bytes (default
    ENCODE_BUDGET_BYTES; at least one)."""
    return max(1, int(budget or ENCODE_BUDGET_BYTES) // (DENSE_COPIES * 4 * int(d_sae)))


@dataclass
class Codes:
    """n sparse codes (CSR): code i is latents[offsets[i]:offsets[i + 1]] (ascending) with their values."""

    offsets: torch.Tensor  # [n + 1] int64
    latents: torch.Tensor  # [nnz] int64
    values: torch.Tensor  # [nnz] float32

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def l0(self) -> torch.Tensor:
        """[n] int64 active latents per code."""
        return self.offsets.diff()

    def lists(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per code: (latent ids ascending int32, values float32)."""
        cuts = self.offsets[1:-1].cpu().numpy()
        lat = np.split(self.latents.cpu().numpy().astype(np.int32), cuts)
        return lat, np.split(self.values.cpu().numpy().astype(np.float32), cuts)

    def padded(self, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents [n, K] int64 padded with -1, values [n, K] float32 padded with 0), K = the longest code or
        `width`."""
        n, l0 = len(self), self.l0
        k = max(int(l0.max()) if n else 0, width or 0)
        row = torch.repeat_interleave(torch.arange(n, device=l0.device), l0)
        slot = torch.arange(row.shape[0], device=l0.device) - self.offsets[:-1][row]
        lat = torch.full((n, k), -1, dtype=torch.int64, device=l0.device)
        val = torch.zeros((n, k), dtype=torch.float32, device=l0.device)
        lat[row, slot], val[row, slot] = self.latents, self.values
        return lat, val

    def select(self, rows: torch.Tensor) -> Codes:
        """The codes `rows` (int64 [m]), in that order."""
        start, l0 = self.offsets[:-1][rows], self.l0[rows]
        offsets = torch.zeros(rows.shape[0] + 1, dtype=torch.int64, device=l0.device)
        offsets[1:] = torch.cumsum(l0, 0)
        owner = torch.repeat_interleave(torch.arange(rows.shape[0], device=l0.device), l0)
        pos = start[owner] + torch.arange(owner.shape[0], device=l0.device) - offsets[:-1][owner]
        return Codes(offsets, self.latents[pos], self.values[pos])

    def replace(self, rows: torch.Tensor, other: Codes) -> Codes:
        """These codes with codes `rows` (int64 [m], distinct) replaced by `other`'s m codes."""
        which = torch.arange(len(self), device=rows.device)
        source = torch.zeros(len(self), dtype=torch.int64, device=rows.device)
        source[rows] = torch.arange(rows.shape[0], device=rows.device) + len(self)
        keep = torch.ones(len(self), dtype=torch.bool, device=rows.device)
        keep[rows] = False
        source = torch.where(keep, which, source)
        return concat([self, other]).select(source)


def concat(parts: list[Codes]) -> Codes:
    """The codes of `parts`, one after the other."""
    l0 = torch.cat([p.l0 for p in parts])
    offsets = torch.zeros(l0.shape[0] + 1, dtype=torch.int64, device=l0.device)
    offsets[1:] = torch.cumsum(l0, 0)
    return Codes(offsets, torch.cat([p.latents for p in parts]), torch.cat([p.values for p in parts]))


def sparse(z: torch.Tensor) -> Codes:
    """The codes of a dense batch z [n, d_sae] (values as float32)."""
    r, c = torch.nonzero(z, as_tuple=True)
    offsets = torch.zeros(z.shape[0] + 1, dtype=torch.int64, device=z.device)
    offsets[1:] = torch.cumsum(torch.bincount(r, minlength=z.shape[0]), 0)
    return Codes(offsets, c, z[r, c].float())


def dense(codes: Codes, d_sae: int, dtype=torch.float32) -> torch.Tensor:
    """The dense [n, d_sae] code of a (bounded) batch of codes."""
    z = torch.zeros(len(codes), d_sae, dtype=dtype, device=codes.latents.device)
    row = torch.repeat_interleave(torch.arange(len(codes), device=z.device), codes.l0)
    z[row, codes.latents] = codes.values.to(dtype)
    return z


@torch.no_grad()
def encode(sae, x: torch.Tensor, budget: int | None = None) -> Codes:
    """The SAE codes of activations x [n, d_model], `batch_rows(d_sae, budget)` activations at a time."""
    step = batch_rows(sae.W_dec.shape[0], budget)
    return concat([sparse(sae.encode(x[i: i + step].to(sae.W_dec.dtype))) for i in range(0, max(x.shape[0], 1), step)])


@torch.no_grad()
def decode(sae, codes: Codes, budget: int | None = None) -> torch.Tensor:
    """The SAE's decoder on the codes, float32 [n, d_model], one bounded dense batch at a time."""
    d_sae = sae.W_dec.shape[0]
    step = batch_rows(d_sae, budget)
    index = torch.arange(len(codes), device=codes.offsets.device)
    return torch.cat([sae.decode(dense(codes.select(index[i: i + step]), d_sae, sae.W_dec.dtype)).float()
                      for i in range(0, max(len(codes), 1), step)])
