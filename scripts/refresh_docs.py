"""Write every number the docs quote from a toy run, or check that the committed docs hold them.

    python scripts/refresh_docs.py            # run the toy twins (resuming under --runs) and rewrite the docs
    python scripts/refresh_docs.py --check    # exit 1 and show the difference where a doc is stale

Generated text sits between `<!-- refresh_docs: NAME -->` and `<!-- /refresh_docs: NAME -->` (a table, a code
block), or is a pattern rewritten in place (a count in a sentence or a code comment: INLINE). The runs are the small
twins the docs name (TWINS: a shipped job with fewer bases or fewer settings, so that tests/test_docs.py can run
them in the suite); each twin's cells are the shipped job's own cells (same seeds, same rows per base). Counts
come from the shipped jobs' grids. Offline: the toy backend builds everything it needs.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import pandas as pd

import synthact

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/wandb.md")
# name: (job, overrides); the docs quote these commands.
TWINS = {
    "paper-toy": ("jobs/paper-toy.yaml", ["bases_per_cell=20", "shard_size=20"]),
    "ladder-toy": ("jobs/ladder-toy.yaml", ["bases_per_cell=20", "shard_size=20", "generation.add_error=[false]",
                                            "generation.value_source=[template]"]),
}
LADDER_EXCERPT = ("R0 -> R1", "R1 -> R2", "R3 -> R4")


def command(name: str) -> str:
    job, overrides = TWINS[name]
    return " ".join(["synthact run", job, *(f"'{o}'" if "[" in o else o for o in overrides),
                     f"--out runs/docs/{name} --no-wandb"])


def analyse(name: str, runs: Path):
    """Run the twin into runs/NAME (a rerun resumes, so it only reads) and compare it."""
    job, overrides = TWINS[name]
    out = runs / name
    sweep = synthact.run_job(ROOT / job, out, wandb=False, progress=False, overrides=overrides)
    if not sweep.ok:
        sys.exit(f"refresh_docs: the {name} twin failed: {sweep.summary.causes()}")
    return synthact.analyse(out)


# --------------------------------------------------------------------------- blocks


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} +- {std:.1f}"


def paper_table(analysis) -> str:
    """README's paper-toy table: each target kind against toward:real, per experiment, its headline metric."""
    from synthact.analysis.compare import headline
    from synthact.analysis.order import kind_rank, scan_rank

    c = headline(analysis.comparison)
    c = c[(c.axis == "target") & (c.base_kind == "real")]
    c = c.iloc[sorted(range(len(c)), key=lambda i: (scan_rank(c.scan_mode.iloc[i], c.scan.iloc[i]),
                                                    kind_rank(c.target_kind.iloc[i])))]
    lines = [f"From `{command('paper-toy')}` (20 real bases per target kind; diff = kind - real with its 95% t "
             "interval, paired over bases; perm p: the permutation p of \"same distribution\"; paper*: the authors' "
             "GPT-2 values, mean +- std (KS against their real targets, 51.6 +- 7.8 for sensitivity, 15.12 +- 8.62 for "
             "plateaus), beside the toy only for reference):", "",
             "| scan | metric | target | mean +- std | toward:real | KS | perm p | diff [95% CI] | paper* |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in c.itertuples():
        paper = "" if pd.isna(r.paper_mean) else f"{r.paper_mean:.3g} +- {r.paper_std:.3g} ({r.paper_ks:.2f})"
        lines.append(f"| {r.scan} | `{r.metric}` | {r.target_kind} | {_pm(r.mean, r.std)} | "
                     f"{_pm(r.mean_real, r.std_real)} | {r.ks_stat:.2f} | {r.ks_perm_p:.2g} | "
                     f"{r.mean_diff:+.1f} [{r.mean_diff_lo:+.1f}, {r.mean_diff_hi:+.1f}] | {paper} |")
    return "\n".join(lines)


def ladder_excerpt(analysis) -> str:
    """README's ladder excerpt: the first pair (fewest settings named) of each step in LADDER_EXCERPT."""
    d = analysis.differences
    d = d[(d.axis == "target") & (d.metric == "max_slope_step") & d.step.isin(LADDER_EXCERPT)]
    rows = []
    for step in LADDER_EXCERPT:
        mine = d[d.step == step]
        mine = mine.iloc[sorted(range(len(mine)), key=lambda i: (len(mine.variant_b.iloc[i].split()),
                                                                 mine.variant_b.iloc[i]))]
        if not mine.empty:
            r = mine.iloc[0]
            pair = f"{_short(r.variant_a)} -> {_short(r.variant_b)}"
            estimate = r.verdict.split(": ", 1)[1].replace(" (95% CI)", "").split("=", 1)[1].strip()
            rows.append((step, pair, estimate))
    width = max(len(p) for _, p, _ in rows) + 2
    lines = [f"From `{command('ladder-toy')}` (20 bases, `max_slope_step`, sensitivity scan):", "", "```",
             f"{'step':<10}{'a -> b':<{width}}KS(b) - KS(a) [95% CI], p, Holm p"]
    lines += [f"{step:<10}{pair:<{width}}{estimate}" for step, pair, estimate in rows]
    return "\n".join([*lines, "```"])


def _short(variant: str) -> str:
    return variant.replace("toward:", "").replace("synthetic_", "")


BLOCKS = {"paper-toy-table": ("paper-toy", paper_table), "ladder-toy-excerpt": ("ladder-toy", ladder_excerpt)}


# --------------------------------------------------------------------------- counts in sentences


def _job(name: str, overrides=()):
    return synthact.load_job(ROOT / "jobs" / f"{name}.yaml", list(overrides))


def _curves(job) -> int:
    return len(job.cells()) * job.bases_per_cell * len(job.read_layers)


def inline() -> list[tuple[str, str, str]]:
    """(file, pattern, replacement) of each count the docs say in a sentence or a code comment."""
    paper, ladder = _job("paper-toy"), _job("ladder-toy")
    grid = synthact.grid(paper)
    return [
        ("README.md", r"# \d+ cells: \d+ target kinds x \d+ scans",
         f"# {len(grid)} cells: {grid.target_kind.nunique()} target kinds x {grid.scan.nunique()} scans"),
        ("README.md", r"for its \d+ curves", f"for its {_curves(paper)} curves"),
        ("README.md", r"--recompute`: \d+ of \d+ rows", f"--recompute`: {_curves(paper)} of {_curves(paper)} rows"),
        ("README.md", r"\(\d+ cells, [\d,]+ curves", f"({len(ladder.cells())} cells, {_curves(ladder):,} curves"),
        ("README.md", r"rebuilt from its row: \d+ of \d+", f"rebuilt from its row: {_curves(ladder)} of {_curves(ladder)}"),
    ]


# --------------------------------------------------------------------------- rewrite, check


def refreshed(text: str, path: str, blocks: dict[str, str]) -> str:
    """`text` (the doc at `path`) with its blocks and inline counts as generated."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- refresh_docs: {re.escape(name)} -->\n).*?(\n<!-- /refresh_docs: "
                             rf"{re.escape(name)} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    for file, pattern, replacement in inline():
        if file == path:
            text = re.sub(pattern, replacement, text)
    return text


def generate(runs: Path) -> dict[str, str]:
    """Every doc in DOCS as the script writes it: {path: text}."""
    analyses = {name: analyse(name, runs) for name in TWINS}
    blocks = {name: make(analyses[twin]) for name, (twin, make) in BLOCKS.items()}
    return {path: refreshed((ROOT / path).read_text(), path, blocks) for path in DOCS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a doc differs")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "docs"), help="where the twins run (resumed)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate(Path(args.runs)).items():
        committed = (ROOT / path).read_text()
        if text == committed:
            continue
        stale.append(path)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(committed.splitlines(True), text.splitlines(True), path,
                                                       f"{path} (generated)"))
        else:
            (ROOT / path).write_text(text)
    if args.check and stale:
        print(f"\nstale: {', '.join(stale)}; run `python scripts/refresh_docs.py` and commit the result")
        return 1
    print(("rewrote " + ", ".join(stale)) if stale else "the docs hold what the toy runs print")
    return 0


if __name__ == "__main__":
    sys.exit(main())
