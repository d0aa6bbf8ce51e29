"""Write every number the docs quote from a toy run, or check that the committed docs hold them.

    python scripts/refresh_docs.py            # run the toy twins (resuming under --runs) and rewrite the docs
    python scripts/refresh_docs.py --check    # exit 1 and show the difference where a doc is stale
    python scripts/refresh_docs.py --science  # also docs/science.md's toy numbers (full-size runs: minutes)

Generated text sits between `<!-- refresh_docs: NAME [how] -->` and `<!-- /refresh_docs: NAME -->` (a table, a
code block, a table cell), or is a pattern rewritten in place (a count in a sentence or a code comment: INLINE). The runs are the small
twins the docs name (TWINS: a shipped job with fewer bases or fewer settings, so that tests/test_docs.py can run
them in the suite); each twin's cells are the shipped job's own cells (same seeds, same rows per base). Counts
come from the shipped jobs' grids. docs/science.md's settings table quotes jobs/paper-toy.yaml at full size (100
bases per cell) and two variants of it (SCIENCE: the commands science.md lists, each restricted to the cells it
quotes), too slow for the suite: `--science` runs and checks them. Offline: the toy backend builds everything.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import pandas as pd

import synthact
from synthact.analysis.answers import short

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md",)
# name: (job, overrides); the docs quote these commands.
TWINS = {
    "paper-toy": ("jobs/paper-toy.yaml", ["bases_per_cell=20", "shard_size=20"]),
    "ladder-toy": ("jobs/ladder-toy.yaml", ["bases_per_cell=20", "shard_size=20", "generation.add_error=[false]",
                                            "generation.value_source=[template]"]),
}
LADDER_EXCERPT = ("R0 -> R1", "R1 -> R2", "R3 -> R4")
# docs/science.md's runs: the shipped paper toy and its variants (synthact's metric rules; exclude_template: true).
SCIENCE = {
    "paper-toy-full": ("jobs/paper-toy.yaml", []),
    "rules": ("jobs/paper-toy.yaml", ["metrics.cut=through_target", "metrics.fallback=last", "directions=[toward:real]"]),
    "exclude": ("jobs/paper-toy.yaml", ["generation.exclude_template=[true]",
                                        "directions=[toward:real, toward:synthetic_baseline, toward:synthetic_structured]"]),
}


def command(name: str) -> str:
    job, overrides = {**TWINS, **SCIENCE}[name]
    return " ".join(["synthact run", job, *(f"'{o}'" if "[" in o else o for o in overrides),
                     f"--out runs/docs/{name} --no-wandb"])


def analyse(name: str, runs: Path):
    """Run the twin into runs/NAME (a rerun resumes, so it only reads) and compare it."""
    job, overrides = {**TWINS, **SCIENCE}[name]
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
            pair = f"{short(r.variant_a)} -> {short(r.variant_b)}"
            estimate = r.verdict.split(": ", 1)[1].replace(" (95% CI)", "").split("=", 1)[1].strip()
            rows.append((step, pair, estimate))
    width = max(len(p) for _, p, _ in rows) + 2
    lines = [f"From `{command('ladder-toy')}` (20 bases, `max_slope_step`, sensitivity scan):", "", "```",
             f"{'step':<10}{'a -> b':<{width}}KS(b) - KS(a) [95% CI], p, Holm p"]
    lines += [f"{step:<10}{pair:<{width}}{estimate}" for step, pair, estimate in rows]
    return "\n".join([*lines, "```"])


BLOCKS = {"paper-toy-table": ("paper-toy", paper_table), "ladder-toy-excerpt": ("ladder-toy", ladder_excerpt)}


# --------------------------------------------------------------------------- docs/science.md (full size)


def _cell(run, scan: str, kind: str, column: str = "plateau_len"):
    rows = run[(run.scan == scan) & (run.target_kind == kind)][column]
    return rows.mean(), rows.std()


def science_blocks(runs: Path) -> dict[str, str]:
    """docs/science.md's generated numbers, from the full-size paper toy and its two variants."""
    for name in SCIENCE:
        analyse(name, runs)
    paper, rules, exclude = (synthact.read_rows(runs / name) for name in SCIENCE)

    def pm(run, scan, kind, column="plateau_len"):
        return "{:.2f} +- {:.2f}".format(*_cell(run, scan, kind, column))

    def m1(run, scan, kind, column="plateau_len"):
        mean, std = _cell(run, scan, kind, column)
        return f"{mean:.1f} +- {std:.1f}"

    def mean(run, scan, kind, column):
        return f"{_cell(run, scan, kind, column)[0]:.1f}"

    T, A, S = "plateaus", "plateaus-around-A", "sensitivity"  # noqa: N806 (the scans, as science.md names them)
    base, struct = "synthetic_baseline", "synthetic_structured"
    real_t, base_t, struct_t = (_cell(paper, T, k)[0] for k in ("real", base, struct))
    ex_base_t, ex_struct_t = (_cell(exclude, T, k)[0] for k in (base, struct))
    baseline = paper[(paper.scan == T) & (paper.target_kind == base)]
    distance = [run[(run.scan == S) & (run.target_kind == base)].target_distance.median() for run in (paper, exclude)]

    longer = base_t > real_t and struct_t > real_t
    paragraph = (f"On the toy the authors' rules find plateaus around synthetic targets {_compared((base_t, struct_t), real_t)}"
                 f" than around real ones (baseline {base_t:.1f}, structured {struct_t:.1f}, real {real_t:.1f})"
                 + (", the opposite of the paper's third finding" if longer else "")
                 + f"; with `exclude_template: true` they are {_compared((ex_base_t, ex_struct_t), real_t)} "
                 f"({ex_base_t:.1f}, {ex_struct_t:.1f} vs {real_t:.1f}).")
    return {
        "science-real-plateaus": f"real plateau {pm(paper, T, 'real')} around T vs {pm(paper, A, 'real')} around A "
                                 "(authors' metric rules)",
        "science-rules": f"with `fallback`: real plateau around A {pm(rules, A, 'real')} (synthact's rules) vs "
                         f"{pm(paper, A, 'real')} (the authors'); around T {pm(rules, T, 'real')} vs {pm(paper, T, 'real')}",
        "science-exclude": f"plateaus around T (authors' rules): baseline {m1(paper, T, base)} (false) vs "
                           f"{m1(exclude, T, base)} (true), structured {m1(paper, T, struct)} vs {m1(exclude, T, struct)}; "
                           f"sensitivity `max_slope_step`: baseline {mean(paper, S, base, 'max_slope_step')} vs "
                           f"{mean(exclude, S, base, 'max_slope_step')}, structured "
                           f"{mean(paper, S, struct, 'max_slope_step')} vs {mean(exclude, S, struct, 'max_slope_step')} "
                           f"(real {mean(paper, S, 'real', 'max_slope_step')}). On the 512-latent toy SAE half the "
                           f"replacements are template latents, so baseline targets lie closer to A (median "
                           f"{distance[0]:.1f} vs {distance[1]:.1f}) and {(baseline.plateau_len == 100).mean():.0%} of "
                           "their plateau curves never reach 20 before A",
        "science-plateaus-paragraph": paragraph,
    }


def _compared(plateaus, real: float) -> str:
    """Whether plateaus are longer or shorter than real's, as the paragraph says it."""
    longer = [p > real for p in plateaus]
    return "*longer*" if all(longer) else "*shorter*" if not any(longer) else "both longer and shorter"


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
        pattern = re.compile(rf"(<!-- refresh_docs: {re.escape(name)}(?: [^>]*)? -->\n?).*?(\n?<!-- /refresh_docs: "
                             rf"{re.escape(name)} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    for file, pattern, replacement in inline():
        if file == path:
            text = re.sub(pattern, replacement, text)
    return text


def generate(runs: Path, science: bool = False) -> dict[str, str]:
    """Every doc in DOCS (and docs/science.md with `science`) as the script writes it: {path: text}."""
    analyses = {name: analyse(name, runs) for name in TWINS}
    blocks = {name: make(analyses[twin]) for name, (twin, make) in BLOCKS.items()}
    docs = {path: refreshed((ROOT / path).read_text(), path, blocks) for path in DOCS}
    if science:
        path = "docs/science.md"
        docs[path] = refreshed((ROOT / path).read_text(), path, science_blocks(runs))
    return docs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a doc differs")
    parser.add_argument("--science", action="store_true", help="also docs/science.md (full-size toy runs: minutes)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "docs"), help="where the twins run (resumed)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generate(Path(args.runs), args.science).items():
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
