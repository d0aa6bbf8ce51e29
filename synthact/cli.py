"""`synthact run | verify | validate | compare | report | bench | bench-ray`: a thin layer over `synthact.api`."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path

from synthact import __version__, api
from synthact.errors import SynthactError

SMOKE_JOB = Path(__file__).resolve().parents[1] / "jobs" / "smoke.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with one_line_warnings():
        parser = build_parser(argv)
        args = parse(parser, argv)
        try:
            return args.func(args)
        except SynthactError as e:
            print(f"synthact: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"synthact: interrupted; {INTERRUPTED.get(args.command, 'nothing was changed')}.", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader stopped reading (`synthact validate JOB | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


# What is true after Ctrl-C, per command.
INTERRUPTED = {
    "run": "finished shards are kept, rerun the same command to resume",
    "compare": "the results are untouched; the per-cell and per-panel summaries already computed are kept under "
               "OUT/analysis and a rerun reuses them",
    "report": "the results are untouched; the figures written so far are in OUT/report, a rerun writes them all",
    "verify": "nothing was changed (verify only reads)",
}


class Parser(argparse.ArgumentParser):
    """argparse with synthact's convention for bad input: one paragraph on stderr, exit 2, and a "did you mean"
    for a misspelt command or option."""

    def error(self, message: str):
        words = re.findall(r"invalid choice: '([^']*)'|unrecognized arguments: (.*)", message)
        typed = [w for choice, rest in words for w in ([choice] if choice else rest.split())]
        known = [*self.choices_and_options()]
        near = [m for w in typed for m in difflib.get_close_matches(w, known, n=1, cutoff=0.6)]
        hint = f"; did you mean {' '.join(near)}?" if near else ""
        self.exit(2, f"synthact: error: {message}{hint} (see `{self.prog} --help`)\n")

    def choices_and_options(self):
        """Every subcommand name and option string this parser and its subparsers know."""
        for action in self._actions:
            yield from action.option_strings
            for name, sub in (action.choices or {}).items() if isinstance(action.choices, dict) else ():
                yield name
                yield from (o for a in sub._actions for o in a.option_strings)


def parse(parser: Parser, argv: list[str]) -> argparse.Namespace:
    """Parse argv; for run and validate, KEY=VALUE words anywhere after the job are spec overrides."""
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        if args.job and "=" in args.job and not Path(args.job).exists():  # `synthact run seed=3`: the default job
            args.overrides.insert(0, args.job)
            args.job = parser.default_job if args.command == "run" else None
        args.overrides += [w for w in extra if "=" in w and not w.startswith("-")]
        extra = [w for w in extra if not ("=" in w and not w.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def given(value: str) -> str:
    """An option's value that must not be empty (`--csv ""` would otherwise be read as not given at all)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty; give a value, or leave the option out")
    return value


@contextlib.contextmanager
def one_line_warnings():
    """synthact's own warnings as one line each ("synthact: warning: ..."), each text once, however many places
    raise it; other libraries' warnings as Python shows them (their deprecations hidden)."""
    shown, python_shows = set(), warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not category.__module__.startswith("synthact"):
            python_shows(message, category, filename, lineno, file, line)
        elif str(message) not in shown:
            shown.add(str(message))
            print(f"synthact: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("always", module="synthact")  # each one reaches `show`, which shows a text once
        warnings.showwarning = show
        yield


# Tools whose many options live in their own module; only the module of the command being run is imported.
TOOL_COMMANDS = {
    "bench": ("synthact.bench", "scan speed: plain vs fast path, points/s, TFLOP/s, deviations"),
    "bench-ray": ("synthact.bench.ray_driver", "driver overhead of a Ray sweep with thousands of shards"),
}


OVERRIDES_HELP = ("spec fields to change, e.g. seed=3 bases_per_cell=20 scan.steps=50 generation.nearest_k=[5,10] "
                  "(dotted keys for nested fields, a number for a list's element; values are YAML; validated like "
                  "the file, and recorded in OUT/job.json)")


def build_parser(argv: list[str] | None = None) -> Parser:
    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(prog="synthact", description=__doc__)
    parser.add_argument("--version", action="version", version=f"synthact {__version__}")
    parser.default_job = str(SMOKE_JOB)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="run a sweep (default: the offline smoke job)", description=cmd_run.__doc__)
    p.add_argument("job", nargs="?", default=str(SMOKE_JOB), type=given, help="YAML job spec (default: jobs/smoke.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    p.add_argument("--out", type=given, help="output directory or URI (default: the job's `output`, else runs/<job name>)")
    p.add_argument("--ray", metavar="ADDRESS", type=given, help="run on Ray: 'auto', 'local', or a cluster address")
    p.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="check an output directory's files against its manifest",
                       description=cmd_verify.__doc__)
    p.add_argument("out", type=given, help="output directory or URI of a sweep")
    p.add_argument("--deep", action="store_true", help="also read every row and the reference statistics")
    p.add_argument("--recompute", nargs="?", type=int, const=0, metavar="N",
                   help="also rebuild each row's base and target from the row alone, rescan it and compare its curves "
                        "and metrics: N bases per cell (a fixed sample), every base without N (loads the model)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("validate", help="check a job spec and print its grid", description=cmd_validate.__doc__)
    p.add_argument("job", nargs="?", type=given, help="YAML job spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP.replace(", and recorded in OUT/job.json", ""))
    p.add_argument("--fields", action="store_true", help="print every spec field with its description (Markdown)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("compare", help="each kind against real, the differences between rungs, verdicts",
                       description=cmd_compare.__doc__)
    p.add_argument("out", type=given, help="output directory of a sweep (its results/ folder is read)")
    p.add_argument("--csv", metavar="FILE", type=given, help="also save the comparison table (every column) as CSV here, and "
                   "beside it the differences between rungs (FILE-differences.csv) and the verdicts (FILE-verdicts.csv)")
    p.add_argument("--all", action="store_true", help="print every metric, not only each experiment's headline metric "
                   "(max_slope_step for sensitivity scans, plateau_len for plateau scans)")
    add_ray_argument(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="PNG figures and a self-contained HTML page of a sweep",
                       description=cmd_report.__doc__)
    p.add_argument("out", type=given, help="output directory of a sweep (its results/ folder is read)")
    p.add_argument("--html", metavar="FILE", type=given, help="where to write the HTML page (default: OUT/report.html)")
    add_ray_argument(p)
    p.set_defaults(func=cmd_report)

    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, summary) in TOOL_COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=summary)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=summary, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    """Run a sweep into an output directory; rerunning the same command resumes it.

    KEY=VALUE words change fields of the spec (e.g. `synthact run jobs/paper-toy.yaml bases_per_cell=20 seed=3`):
    the same validation and messages as the file, and OUT/job.json records them. A resume needs the same spec:
    the same overrides (or none that change the job's identity, docs/spec.md "Resume"); a different one is refused.
    """
    from synthact.analysis import summary

    sweep = api.run_job(args.job, args.out, ray=args.ray, wandb=not args.no_wandb, progress=not args.no_progress,
                        overrides=args.overrides)
    result = sweep.summary
    if result.redone:
        print(f"synthact: {len(result.redone)} finished shard(s) failed verification and were redone:", file=sys.stderr)
        for shard_id, problem in result.redone:
            print(f"  {shard_id}: {problem}", file=sys.stderr)
    if result.wrote_nothing:
        print(failure_report(result), file=sys.stderr)
        return 1
    print(summary.render(result, sweep.out, sweep.comparison, sweep.verdicts, sweep.differences, sweep.toy))
    if sweep.wandb:
        print(sweep.wandb)
    return 0 if result.ok else 1


def failure_report(result) -> str:
    """Why a sweep wrote nothing: each distinct cause once, with how many shards (and which) it failed."""
    lines = [f"synthact: every shard failed ({len(result.failures)} of {result.shards}); nothing was written. Causes:"]
    for cause, shard_ids in result.causes():
        shown = ", ".join(shard_ids[:3]) + (f" and {len(shard_ids) - 3} more" if len(shard_ids) > 3 else "")
        lines.append(f"  {len(shard_ids)} shard(s) ({shown}): {cause}")
    lines.append("Fix the cause and rerun the same command: the failed shards are run again.")
    return "\n".join(lines)


def add_ray_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="ADDRESS", type=given,
                        help="aggregate the cells as Ray tasks ('auto', 'local' or a cluster address); the results "
                             "and OUT/analysis must be on storage every node reaches")


def cmd_compare(args: argparse.Namespace) -> int:
    """The study's questions and their answers first (one screen: each verdict and each step of the ladder with its
    estimate, 95% interval, p, Holm p and n), then in a fixed order: each kind against real along both axes (mean
    +- std, the difference of means with its 95% t interval, paired over bases where the kinds share them, the KS
    distance with its permutation p, the Wasserstein distance), the authors' reported values where the sweep's
    framing is theirs, the differences between rungs (KS(b) - KS(a) with its interval, p and Holm p), and the
    diagnostics of the built codes. Each experiment's headline metric (--all: every metric); every line fits 120
    characters; --csv has every column. Per-cell and per-panel numbers are cached under OUT/analysis/, so a rerun
    reads only what changed."""
    from synthact.analysis.compare import differences_path, save_csv
    from synthact.run.store import completion_note

    if note := completion_note(args.out):
        print(note + "\n")
    analysis = api.analyse(args.out, args.ray)
    print(analysis.text(every_metric=args.all))
    if args.csv:
        saved = [save_csv(analysis.comparison, args.csv, "comparison"),
                 save_csv(analysis.differences, differences_path(args.csv), "differences"),
                 save_csv(analysis.verdicts, differences_path(args.csv, "verdicts"), "verdicts")]
        print("\nSaved: " + ", ".join(map(str, saved)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write PNG figures (OUT/report/) and one self-contained HTML page (default OUT/report.html): the curves and
    metric distributions of each kind against real, the comparison and differences tables, the diagnostics."""
    from synthact.run.store import completion_note

    if note := completion_note(args.out):
        print(note)
    report = api.report(args.out, args.html, args.ray)
    print(report.describe())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check that every shard the manifest records is present, of its recorded size and sha256, readable, and
    holds its rows; list stray files; with --deep also read every row and the reference statistics.

    With --recompute [N], also rebuild N bases per cell (every base without N) from their rows alone, rescan
    them with the rows' scan settings and recompute the metrics with the rows' metric settings
    (synthact/run/recompute.py states the tolerances); print per cell how many rows recompute and name the
    rows that do not.

    Exit 0 when all is well, 1 when something is wrong (rerunning the same `synthact run` redoes bad shards and
    recomputes damaged statistics; strays are never read and are left to you).
    """
    import time

    from synthact.layout import resolve_location

    started = time.perf_counter()
    found = api.verify(args.out, deep=args.deep, recompute=args.recompute)
    uri = resolve_location(args.out)[2]
    for cell in found.recomputed:
        print(f"cell {cell.cell_id} ({cell.label}): {cell.matched} of {cell.rows} rows recompute"
              + (f" (the cell holds {cell.expected})" if cell.expected != cell.rows else ""))
        for problem in cell.mismatches:
            print(f"  mismatch: {problem}")
    if args.recompute is not None:
        matched, rows = sum(c.matched for c in found.recomputed), sum(c.rows for c in found.recomputed)
        expected = sum(c.expected for c in found.recomputed)
        print(f"{uri}: {matched} of {rows} rows in {len(found.recomputed)} cell(s) recompute"
              + (f" (the cells hold {expected})" if expected != rows else "")
              + f" ({time.perf_counter() - started:.1f} s)")
    for shard_id, problem in found.bad:
        print(f"bad shard {shard_id}: {problem}")
    for path in found.strays:
        print(f"stray file (no manifest record; never read): {path}")
    for path, problem in found.bad_stats:
        print(f"damaged reference statistics {path}: {problem}")
    for path, problem in found.bad_caches:
        print(f"damaged toy cache {path}: {problem}")
    print(f"{uri}: {len(found.good)} shard(s) verified, {len(found.bad)} bad, {len(found.strays)} stray file(s)"
          + (f", {len(found.bad_stats)} damaged statistics" if found.bad_stats else "")
          + (f", {len(found.bad_caches)} damaged toy cache(s)" if found.bad_caches else "")
          + ("; rerun the same `synthact run` to redo the bad shards and statistics" if found.redo or found.bad_stats
             or found.bad_caches else "")
          + (f"; {len(found.other_spec)} were written by another job spec: a rerun refuses until they are moved out"
             if found.other_spec else "")
          + (f"; {len(found.outside)} name no shard of this job: never read, a rerun leaves them" if found.outside else "")
          + ("; stray files are never read: move them out of results/" if found.strays else ""))
    return 0 if found.ok else 1


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a job spec and print its grid without loading any model (or, with --fields, list the fields): the
    grid axes that vary from cell to cell (one row per cell), what every cell shares, the counts and the KS power."""
    if args.fields:
        print(api.field_reference())
        return 0
    if not args.job:
        raise SynthactError("give a job spec to validate (e.g. synthact validate jobs/smoke.yaml), or --fields")
    job = api.load_job(args.job, args.overrides)
    cells = api.grid(job)
    size = api.grid_size(job)
    print(f"job '{job.name}': valid (spec hash {job.spec_hash[:12]})")
    for line in grid_lines(cells):
        print(line)
    from synthact.analysis.power import detectable_ks_difference

    counts = (f"{size['cells']} cells x {job.bases_per_cell} bases = {size['curves']} curves "
              f"({len(job.read_layers)} read layer(s)); {size['shards']} shards of <= {job.shard_size} bases; "
              f"{size['scan_points']:,} scan points (forward passes of one position through the read layers).")
    power = (f"power: with {job.bases_per_cell} bases per kind the two-sample KS test (alpha 0.05) detects a KS "
             f"distance of {detectable_ks_difference(job.bases_per_cell):.3f} between two kinds with 80% power")
    inputs = f"models: {', '.join(m.label for m in job.model)}; SAEs: {', '.join(s.label for s in job.sae)}"
    for text in (counts, inputs, power):
        print(textwrap.fill(text, WIDTH, subsequent_indent="  "))
    for line in api.memory_estimate(job).splitlines():  # memory per worker and downloads (inputs/memory.py)
        indent = line[:len(line) - len(line.lstrip())]
        print(textwrap.fill(line, WIDTH, subsequent_indent=indent + "    ", break_on_hyphens=False,
                            break_long_words=False))
    return 0


GRID_ROWS = 60  # cells listed by validate; `synthact.grid(JOB)` lists every one
WIDTH = 120  # characters per printed line


def grid_lines(cells) -> list[str]:
    """The grid as validate prints it: the axes that take several values (one row per cell, '-' where an axis does
    not apply), then those with one value in every cell, then those with one value where they apply."""
    import pandas as pd

    from synthact.results import axis_value

    values = {c: [axis_value(c, v) for v in cells[c]] for c in cells}
    distinct = {c: {repr(v): v for v in vs if v is not None} for c, vs in values.items()}
    varying = [c for c in values if len(distinct[c]) > 1]
    lines = []
    if varying:
        table = pd.DataFrame({c: ["-" if v is None else v for v in values[c]] for c in varying})
        shown = table.head(GRID_ROWS).to_string(index=False).splitlines()
        twins = _twin_axes(table) if max(map(len, shown)) + 2 > WIDTH else {}
        if twins:  # too wide: an axis that only renames another one is named, not shown
            shown = table.drop(columns=list(twins)).head(GRID_ROWS).to_string(index=False).splitlines()
        lines.append("the axes that vary, one row per cell:")
        lines += ["  " + line for line in shown]
        if len(table) > GRID_ROWS:
            lines.append(f"  ... and {len(table) - GRID_ROWS} more cells (synthact.grid(JOB) lists them all)")
        lines += [f"  ({twin}: one value for each value of {axis}, not shown)" for twin, axis in twins.items()]
    for where, keep in (("every cell", lambda c: None not in values[c]), ("where they apply", lambda c: None in values[c])):
        same = [f"{c} {next(iter(distinct[c].values()))}" for c in values if len(distinct[c]) == 1 and keep(c)]
        if same:
            lines += textwrap.wrap(f"{where}: " + ", ".join(same), WIDTH, subsequent_indent="  ")
    return lines


def _twin_axes(table) -> dict[str, str]:
    """{axis: earlier axis} for each column whose values are in one-to-one correspondence with an earlier one's."""
    twins: dict[str, str] = {}
    for i, c in enumerate(table.columns):
        for d in table.columns[:i]:
            if d not in twins and len(table[[c, d]].astype(str).drop_duplicates()) == table[c].astype(str).nunique() \
                    == table[d].astype(str).nunique():
                twins[c] = d
                break
    return twins


if __name__ == "__main__":
    sys.exit(main())
