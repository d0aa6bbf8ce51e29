"""`synthact bench --calibration [REPLICATES]`: type-I error and coverage of every test and interval that
`synthact compare` prints, by simulation (docs/benchmarks.md, "Calibration").

Each configuration draws REPLICATES data sets of three samples, real, a and b (n values each; paired: row
i of the three is one base, their values correlated through a shared Gaussian factor, correlation `RHO`,
as cells built for the same bases are), runs inference.py's functions on them as aggregate.py does, and
counts:
- KS(b, real) - KS(a, real) (`paired_difference`): how often p < 0.05 where the two distances are equal
  (type-I), how often the 95% interval holds the true difference (coverage);
- mean(b) - mean(a): the same, type-I where the means are equal;
- one kind against real (`distance_to_real`): the permutation p's type-I where a is distributed as real,
  and the coverage of mean(a) - mean(real)'s interval.
Holm's adjustment needs no calibration of its own: it controls the family-wise error for any valid
p-values, under any dependence.

Data (`DATA`): continuous (normal), skewed (lognormal: exp(0.5 x) of the continuous draws, which leaves
every KS statistic as it is, so skewed rows repeat the continuous KS rates) and integer with ties like the
max-slope step (round(55 + 11 x) clipped to 0..99, 5% of values at 99). Kinds are built from real's
latent x: `shift` (x + s), `scale` (x * s) and, for integers, `mass` (an extra share of values at 99),
each tuned so that its KS distance to real is exactly the scenario's (on the integer grid for integers).
Scenarios (`SCENARIOS`): `zero` (a, b and real one distribution: every null holds), `near` (a shifted, b
scaled, both at KS 0.5 / sqrt(n) from real: indistinguishable from real), `equal-ks` (a shifted, b scaled,
both at KS 0.2: equal distances, different shapes), `mass-vs-shift` (integers: a with extra mass at 99, b
shifted, both at KS 0.2) and `apart` (a shifted to 0.1, b scaled to 0.25: coverage of a non-zero
difference). Sizes 100 and 1000 take the exact resampling path, 10,000 the large-sample one.
"""

from __future__ import annotations

import functools
import math
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import optimize, stats

from synthact.analysis import aggregate, inference

DATA = ("continuous", "skewed", "integer")
DESIGNS = ("paired", "unpaired")
SIZES = (100, 1000, 10_000)
SCENARIOS = ("zero", "near", "equal-ks", "mass-vs-shift", "apart")
RHO = 0.5  # correlation of a base's three latent values (cells built for the same bases: 0.3-0.6 on the toy)
P99 = 0.05  # share of integer values at 99 (curves that never blow up)
SKEW = 0.5  # skewed data: exp(SKEW x), a lognormal (real's skewness 1.8)
ALPHA, LEVEL = 0.05, 0.95
TARGET_TYPE_I = (0.025, 0.075)
TARGET_COVERAGE = (0.92, 0.98)
GRID = np.linspace(-12, 12, 24_001)  # where continuous KS distances are evaluated
STEPS = np.arange(100)


# --------------------------------------------------------------------------- the kinds' distributions


def _cdf(data: str, transform: str, s: float) -> np.ndarray:
    """The CDF of a kind on GRID (continuous; skewed is the same up to exp, which keeps KS) or 0..99."""
    if data == "integer":
        x = (STEPS + 0.5 - 55) / 11
        base = stats.norm.cdf(x - s) if transform == "shift" else stats.norm.cdf(x / s) if transform == "scale" \
            else stats.norm.cdf(x) * (1 - s)
        f = (1 - P99) * base
        f[-1] = 1.0
        return f
    return stats.norm.cdf(GRID - s) if transform == "shift" else stats.norm.cdf(GRID / s)


def _ks_to_real(data: str, transform: str, s: float) -> float:
    return float(np.abs(_cdf(data, transform, s) - _cdf(data, "shift", 0.0)).max())


@functools.lru_cache(maxsize=None)
def tuned(data: str, transform: str, d: float) -> float:
    """The shift, scale or extra mass at which a kind is at KS distance d from real."""
    if d == 0:
        return {"shift": 0.0, "scale": 1.0, "mass": 0.0}[transform]
    data = "integer" if data == "integer" else "continuous"
    low, high = {"shift": (0.0, 5.0), "scale": (1.0, 20.0), "mass": (0.0, 0.95)}[transform]
    return optimize.brentq(lambda s: _ks_to_real(data, transform, s) - d, low, high, xtol=1e-12)


def kinds(scenario: str, data: str, n: int) -> tuple[tuple[str, float], tuple[str, float]]:
    """(transform, parameter) of kinds a and b in a scenario."""
    d = {"zero": (0.0, 0.0), "near": (0.5 / math.sqrt(n),) * 2, "equal-ks": (0.2, 0.2), "mass-vs-shift": (0.2, 0.2),
         "apart": (0.1, 0.25)}[scenario]
    ta, tb = ("mass", "shift") if scenario == "mass-vs-shift" else ("shift", "scale")
    return (ta, tuned(data, ta, d[0])), (tb, tuned(data, tb, d[1]))


def _mean(data: str, transform: str, s: float) -> float:
    """The mean of a kind."""
    if data == "integer":
        f = _cdf(data, transform, s)
        return float((STEPS * np.diff(np.concatenate([[0.0], f]))).sum())
    if data == "skewed":  # exp(SKEW (x + s)) or exp(SKEW s x), x standard normal
        return math.exp(SKEW * s + SKEW**2 / 2) if transform == "shift" else math.exp((SKEW * s) ** 2 / 2)
    return s if transform == "shift" else 0.0


def truth(scenario: str, data: str, n: int) -> dict:
    """The true KS difference, difference of means (b - a) and mean(a) - mean(real) of a scenario."""
    (ta, sa), (tb, sb) = kinds(scenario, data, n)
    kind = "integer" if data == "integer" else "continuous"
    real = _mean(data, "shift", 0.0)
    return {"ks_diff": _ks_to_real(kind, tb, sb) - _ks_to_real(kind, ta, sa),
            "mean_diff": _mean(data, tb, sb) - _mean(data, ta, sa), "a_minus_real": _mean(data, ta, sa) - real}


def draw(scenario: str, data: str, n: int, paired: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """One data set: real, a, b (n values each)."""
    if paired:
        latent = math.sqrt(RHO) * rng.standard_normal(n) + math.sqrt(1 - RHO) * rng.standard_normal((3, n))
    else:
        latent = rng.standard_normal((3, n))
    out = []
    for x, (transform, s) in zip(latent, (("shift", 0.0), *kinds(scenario, data, n))):
        if data == "integer":
            value = np.clip(np.round(55 + 11 * (x + s if transform == "shift" else x * s if transform == "scale"
                                                else x)), 0, 99)
            value[rng.random(n) < (P99 + (1 - P99) * s if transform == "mass" else P99)] = 99
        else:
            value = x + s if transform == "shift" else x * s
            value = np.exp(SKEW * value) if data == "skewed" else value
        out.append(value)
    return out


# --------------------------------------------------------------------------- one configuration


def run_config(scenario: str, data: str, design: str, n: int, replicates: int, seed: int = 0) -> list[dict]:
    """Type-I error and coverage of every test and interval over `replicates` data sets: one row, or for
    continuous data two, the second for skewed data made of the same draws (exp(SKEW x) keeps every KS
    statistic, so only the means are computed again)."""
    rng = np.random.default_rng([seed, SCENARIOS.index(scenario), DATA.index(data), DESIGNS.index(design), n])
    paired = design == "paired"
    kinds_of_data = ("continuous", "skewed") if data == "continuous" else (data,)
    true = {d: truth(scenario, d, n) for d in kinds_of_data}
    hits = {d: dict.fromkeys(("ks_reject", "ks_cover", "mean_reject", "mean_cover", "perm_reject", "real_cover"), 0)
            for d in kinds_of_data}
    start = time.perf_counter()
    for r in range(replicates):
        values = draw(scenario, data, n, paired, rng)
        d = inference.paired_difference(*values, paired=paired, n_boot=aggregate.N_BOOT, seed=r)
        perm = inference.distance_to_real(values[1], values[0], paired=paired, n_perm=aggregate.N_PERM, seed=r) \
            if scenario == "zero" else None  # the permutation p where "a distributed as real" is a null (costly)
        for name in kinds_of_data:
            real, a, b = [np.exp(SKEW * v) for v in values] if name == "skewed" else values
            means = inference.mean_difference(b, a, paired=paired)
            one = inference.mean_difference(a, real, paired=paired)
            count, t = hits[name], true[name]
            count["ks_reject"] += d["ks_diff_p"] < ALPHA
            count["ks_cover"] += d["ks_diff_lo"] <= t["ks_diff"] <= d["ks_diff_hi"]
            count["mean_reject"] += means["mean_diff_p"] < ALPHA
            count["mean_cover"] += means["mean_diff_lo"] <= t["mean_diff"] <= means["mean_diff_hi"]
            count["perm_reject"] += perm is not None and perm["ks_p"] < ALPHA
            count["real_cover"] += one["mean_diff_lo"] <= t["a_minus_real"] <= one["mean_diff_hi"]
    seconds = round(time.perf_counter() - start, 1)
    out = []
    for name in kinds_of_data:
        rate, t = {k: v / replicates for k, v in hits[name].items()}, true[name]
        ks_null, mean_null = abs(t["ks_diff"]) < 1e-9, abs(t["mean_diff"]) < 1e-9
        out.append({"scenario": scenario, "data": name, "design": design, "n": n, "replicates": replicates,
                    "path": "gaussian" if n > inference.EXACT_MAX_N else "bootstrap", "true_ks_diff": t["ks_diff"],
                    "ks_type_i": rate["ks_reject"] if ks_null else None, "ks_coverage": rate["ks_cover"],
                    "mean_type_i": rate["mean_reject"] if mean_null else None, "mean_coverage": rate["mean_cover"],
                    "perm_type_i": rate["perm_reject"] if scenario == "zero" else None,
                    "real_mean_coverage": rate["real_cover"], "seconds": seconds})
    return out


def configurations(sizes=SIZES, data=DATA, designs=DESIGNS, scenarios=SCENARIOS):
    """Every (scenario, data, design, n) the benchmark simulates (mass-vs-shift only for integers; skewed
    data comes with continuous, from the same draws)."""
    return [(s, d, g, n) for d in data if d != "skewed" for g in designs for n in sizes for s in scenarios
            if s != "mass-vs-shift" or d == "integer"]


def calibration(replicates: int = 1000, sizes=SIZES, jobs: int = 1, seed: int = 0, data=DATA, designs=DESIGNS,
                scenarios=SCENARIOS) -> list[dict]:
    """Every configuration's rates, in `jobs` processes, ordered by data, design, n and scenario."""
    todo = configurations(sizes, data, designs, scenarios)
    run = functools.partial(_run, replicates=replicates, seed=seed)
    if jobs <= 1:
        rows = [row for c in todo for row in run(c)]
    else:
        with ProcessPoolExecutor(jobs) as pool:
            rows = [row for rows in pool.map(run, todo) for row in rows]
    key = {name: i for i, name in enumerate(DATA)}
    return sorted([r for r in rows if r["data"] in data], key=lambda r: (
        key[r["data"]], DESIGNS.index(r["design"]), r["n"], SCENARIOS.index(r["scenario"])))


def _run(config, replicates: int, seed: int) -> list[dict]:
    return run_config(*config, replicates=replicates, seed=seed)


# --------------------------------------------------------------------------- the table


def misses(row: dict) -> list[str]:
    """The rates of a row outside their targets."""
    out = []
    for key in ("ks_type_i", "mean_type_i", "perm_type_i"):
        if row[key] is not None and not TARGET_TYPE_I[0] <= row[key] <= TARGET_TYPE_I[1]:
            out.append(key)
    for key in ("ks_coverage", "mean_coverage", "real_mean_coverage"):
        if not TARGET_COVERAGE[0] <= row[key] <= TARGET_COVERAGE[1]:
            out.append(key)
    return out


COLUMNS = (("ks_type_i", "KS diff type-I"), ("ks_coverage", "KS diff cover"), ("mean_type_i", "mean diff type-I"),
           ("mean_coverage", "mean diff cover"), ("perm_type_i", "perm p type-I"), ("real_mean_coverage", "vs real mean cover"))


def format_calibration(rows: list[dict]) -> str:
    """A Markdown table: one row per configuration, rates in %, a mark on each one outside its target."""
    head = "| data | design | n | scenario | " + " | ".join(name for _, name in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (4 + len(COLUMNS))]
    for row in rows:
        bad = set(misses(row))
        cells = ["" if row[k] is None else f"{100 * row[k]:.1f}" + (" (!)" if k in bad else "") for k, _ in COLUMNS]
        lines.append(f"| {row['data']} | {row['design']} | {row['n']:,} | {row['scenario']} | " + " | ".join(cells) + " |")
    total = sum(len(misses(r)) for r in rows)
    lines.append(f"\n{len(rows)} configurations, {rows[0]['replicates'] if rows else 0} replicates each; targets: "
                 f"type-I {TARGET_TYPE_I[0]:.1%}-{TARGET_TYPE_I[1]:.1%}, coverage {TARGET_COVERAGE[0]:.0%}-"
                 f"{TARGET_COVERAGE[1]:.0%}; (!) marks the {total} rates outside them.")
    return "\n".join(lines)
