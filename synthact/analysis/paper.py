"""The numbers the paper's authors reported, for printing beside a replication (docs/science.md).

Giglemiani et al. 2024 ran GPT-2 small with the SAE release `gpt2-small-res-jb` at layer 1, read
at the last block, 1000 real bases. These are the values in the authors' notebook output (their
final figures may differ slightly): mean and std of the metric per target kind, and the two-sample
KS statistic against the `other real` targets where they gave one.
"""

from __future__ import annotations

import math

# metric -> (scan mode of that experiment, {target kind: (mean, std, KS against real or NaN)})
REPORTED = {
    "max_slope_step": ("interpolate", {
        "real": (51.6, 7.8, math.nan),
        "sae_recon": (53.3, 8.4, 0.11),
        "synthetic_structured": (55.7, 11.5, 0.21),
        "synthetic_baseline": (56.9, 11.4, 0.26),
        "gaussian": (65.0, 11.2, 0.61),
    }),
    "plateau_len": ("step", {
        "real": (15.1, 8.6, math.nan),
        "gaussian": (8.3, 3.8, math.nan),
        "synthetic_structured": (7.8, 3.8, math.nan),
        "synthetic_baseline": (6.2, 3.1, math.nan),
    }),
}
COLUMNS = ("paper_mean", "paper_std", "paper_ks", "paper_mean_real", "paper_std_real")


def is_paper_setting(row: dict) -> bool:
    """GPT-2 small, gpt2-small-res-jb, layer 1 read at the last block (11), real bases, targets varying."""
    return (row.get("axis") == "target" and row.get("base_kind") == "real" and row.get("model") == "gpt2"
            and str(row.get("sae", "")).startswith("gpt2-small-res-jb/") and row.get("layer") == 1
            and row.get("read_layer") == 11)


def reported(row: dict) -> dict:
    """The paper's numbers for a comparison row (NaN where the paper reported none for this row)."""
    empty = dict.fromkeys(COLUMNS, math.nan)
    if not is_paper_setting(row) or row.get("metric") not in REPORTED:
        return empty
    mode, table = REPORTED[row["metric"]]
    if row.get("scan_mode") != mode or row.get("target_kind") not in table:
        return empty
    mean, std, ks = table[row["target_kind"]]
    real_mean, real_std, _ = table["real"]
    return {"paper_mean": mean, "paper_std": std, "paper_ks": ks, "paper_mean_real": real_mean,
            "paper_std_real": real_std}
