"""How far two float computations of one result row may differ: the tolerances of `verify --recompute`.

A row recomputed on another machine (another CPU, BLAS, thread count or GPU) sums its float32 terms in
another order, so every value differs by rounding, by an amount that depends on the arithmetic, not on
the machine. The bounds (docs/science.md, "Recomputing a row") use:

- u, the unit roundoff of the scan's dtype (2^-24 for float32; tf32 and bfloat16 round matmul inputs to
  10 and 7 mantissa bits);
- T, the number of terms accumulated on the way to a value: the SAE decoder's d_sae (an SAE-built base)
  and, per block from the model's input to the read layer, K = the widest sum of a block (d_model, d_mlp,
  n_heads * d_head or n_ctx). Independent rounding errors add like a random walk, so a value's error is
  about u * sqrt(T) of its magnitude (Higham and Mary, SIAM J. Sci. Comput. 2019);
- the magnitude of what is compared: the read layer's activation |y_0| at the scan's start point for an
  L2 curve (its error is relative to |y|, not to d_n = |y_n - y_0|, which is 0 at n = 0), the logits'
  scale for a JS curve, the two vectors' norms for ||T - A||.

Every bound covers two computations (the stored and the recomputed row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROUNDOFF = {"float32": 2.0**-24, "tf32": 2.0**-11, "bfloat16": 2.0**-8}
# sqrt(JS) is a metric; an endpoint whose log-probabilities move by at most e moves it by at most
# sqrt(JS(p, p')) <= e / sqrt(8 ln 2) (second order in e), and e <= 2 max|dz| (log-softmax).
JS_PER_LOGIT = 2 / math.sqrt(8 * math.log(2))
# Pinsker: the L1 distance of the two distributions is at most sqrt(8 ln 2) * sqrt-JS (bits).
L1_PER_JS = math.sqrt(8 * math.log(2))


@dataclass(frozen=True)
class Arithmetic:
    """What bounds the rounding of one model's scans: unit roundoff, widest sum per block, vocabulary."""

    u: float
    widest_sum: int  # K
    d_sae: int
    d_vocab: int
    n_layers: int

    @classmethod
    def of(cls, model, d_sae: int, n_ctx: int, dtype: str) -> Arithmetic:
        cfg = model.cfg
        widest = max(cfg.d_model, cfg.d_mlp or 0, cfg.n_heads * cfg.d_head, n_ctx)
        return cls(ROUNDOFF[dtype], widest, d_sae, cfg.d_vocab_out, cfg.n_layers)

    def terms(self, blocks: int) -> int:
        """T for a value computed after `blocks` blocks (counting from the model's input), from an SAE-built
        or model-read base."""
        return self.d_sae + self.widest_sum * max(blocks, 1)

    def l2(self, blocks: int, start_norm: float, curve_max: float) -> float:
        """Max |stored - recomputed| of an L2 curve read after `blocks` blocks: 2 u sqrt(T) (2 |y_0| + max d),
        every point (|y_n| <= |y_0| + d_n; both endpoints; both computations)."""
        return 2 * self.u * math.sqrt(self.terms(blocks)) * (2 * start_norm + curve_max)

    def js(self, start_logit_max: float, stored: np.ndarray, again: np.ndarray) -> np.ndarray:
        """Per point, max |stored - recomputed| of a sqrt-JS curve (bits): logits rounded by
        dz = u sqrt(T) (max|z_0| + ln V) move it by at most JS_PER_LOGIT dz per endpoint; the divergence's own
        sum over V tokens adds u (1 + log2(V) L1 / ln 2) to JS, which the square root amplifies near 0
        (the L1 distance of the distributions, at most L1_PER_JS * s and 2 (max|z| + ln V))."""
        scale = start_logit_max + math.log(self.d_vocab)
        dz = self.u * math.sqrt(self.terms(self.n_layers + 1)) * scale
        s = np.maximum(np.abs(stored), np.abs(again))
        l1 = np.minimum(L1_PER_JS * s, 2 * scale)
        summed = self.u * (1 + math.log2(self.d_vocab) * l1 / math.log(2))
        return 2 * (2 * JS_PER_LOGIT * dz) + np.sqrt(s**2 + 2 * summed) - s

    def distance(self, blocks: int, base_norm: float, target_norm: float) -> float:
        """Max |stored - recomputed| of ||T - A||, both rebuilt after `blocks` blocks: 2 u sqrt(T) (|A| + |T|)."""
        return 2 * self.u * math.sqrt(self.terms(blocks)) * (base_norm + target_norm)
