"""The numbers the paper's authors reported, for printing beside a replication (docs/science.md).

Giglemiani et al. 2024 ran GPT-2 small with the SAE release `gpt2-small-res-jb` at layer 1, read
at the last block, 1000 real bases. These are the values in the authors' notebook output (their
final figures may differ slightly): mean and std of the metric per target kind, and the two-sample
KS statistic against the `other real` targets. A comparison row of the paper's design (real bases,
targets varying) gets them where its scan framing and metric rules are the authors' (FRAMINGS), with
`paper_match` saying how far it matches: "setting" (model, SAE and layers too: a replication) or
"framing" (only the framing and rules, e.g. the toy twin: the values are for reference); else no values.
Verdicts never read them.
"""

from __future__ import annotations

import math

# metric -> {target kind: (mean, std, KS against real or NaN)}
REPORTED = {
    # replications.ipynb cells 52-53 and 82-83: the 1000-base interpolation A -> T (100 points) of commit 3c25aaa
    "max_slope_step": {
        "real": (51.6, 7.8, math.nan),
        "sae_recon": (53.3, 8.4, 0.11),
        "synthetic_structured": (55.7, 11.5, 0.21),
        "synthetic_baseline": (56.9, 11.4, 0.26),
        "gaussian": (65.0, 11.2, 0.61),
    },
    # experiment_plateaus.ipynb cells 24-25, printed in commit 3c25aaa's session: from T (in A's prompt) towards A,
    # before the last commit redirected the curves to a fresh Gaussian draw (docs/science.md)
    "plateau_len": {
        "real": (15.12, 8.62, math.nan),
        "gaussian": (8.33, 3.80, 0.568),
        "synthetic_structured": (7.76, 3.76, 0.633),
        "synthetic_baseline": (6.18, 3.13, 0.754),
    },
}
# metric -> the result columns (of the comparison row) that must hold these values for the authors'
# numbers to apply: the scan's framing and the metric rules of the authors' code.
FRAMINGS = {
    "max_slope_step": {"scan_mode": "interpolate", "scan_start": "base", "steps": 99, "slope_threshold": 0.02},
    "plateau_len": {"scan_mode": "step", "scan_start": "target", "step_size": 0.5, "stop_at_target": True,
                    "plateau_threshold": 20.0, "plateau_mode": "absolute", "cut": "before_target",
                    "fallback": "constant"},
}
# The row columns a comparison row carries so that `reported` can tell the framing.
FRAMING_COLUMNS = tuple(dict.fromkeys(c for f in FRAMINGS.values() for c in f))
COLUMNS = ("paper_mean", "paper_std", "paper_ks", "paper_mean_real", "paper_std_real")
# Said under a printed table whose paper values are framing-only (paper_match "framing", marked *).
FRAMING_NOTE = ("* the authors' GPT-2-small values (gpt2-small-res-jb, layer 1), for reference only: this sweep's scan "
                "framing and metric rules are theirs, its model, SAE and layers are not.")


def is_paper_setting(row: dict) -> bool:
    """GPT-2 small, gpt2-small-res-jb, layer 1 read at the last block (11)."""
    return (row.get("model") == "gpt2" and str(row.get("sae", "")).startswith("gpt2-small-res-jb/")
            and row.get("layer") == 1 and row.get("read_layer") == 11)


def paper_match(row: dict) -> str:
    """"setting" (the authors' model, SAE, layers, framing and metric rules), "framing" (their framing and metric
    rules only), or "" (no paper values apply). Only target-axis rows of real bases (the paper's design) match."""
    metric = row.get("metric")
    if (row.get("axis") != "target" or row.get("base_kind") != "real" or not same_framing(row, metric)
            or row.get("target_kind") not in REPORTED[metric]):
        return ""
    return "setting" if is_paper_setting(row) else "framing"


def same_framing(row: dict, metric: str) -> bool:
    """Whether the row's scan framing and metric rules are those the authors measured `metric` with."""
    return metric in FRAMINGS and all(_equal(row.get(k), v) for k, v in FRAMINGS[metric].items())


def reported(row: dict) -> dict:
    """The paper's numbers for a comparison row and `paper_match` (NaN and "" where no paper values apply)."""
    match = paper_match(row)
    if not match:
        return {"paper_match": ""} | dict.fromkeys(COLUMNS, math.nan)
    table = REPORTED[row["metric"]]
    mean, std, ks = table[row["target_kind"]]
    real_mean, real_std, _ = table["real"]
    return {"paper_match": match, "paper_mean": mean, "paper_std": std, "paper_ks": ks, "paper_mean_real": real_mean,
            "paper_std_real": real_std}


def _equal(value, wanted) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if isinstance(wanted, float):
        return math.isclose(float(value), wanted)
    return value == wanted
