"""`synthact run | verify | validate | compare | report | bench | bench-ray`: a thin layer over `synthact.api`."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

from synthact import api
from synthact.errors import SynthactError

SMOKE_JOB = Path(__file__).resolve().parents[1] / "jobs" / "smoke.yaml"


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SynthactError as e:
        print(f"synthact: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthact: interrupted; finished shards are kept, rerun the same command to resume.", file=sys.stderr)
        return 130


# Tools whose many options live in their own module; only the module of the command being run is imported.
TOOL_COMMANDS = {
    "bench": ("synthact.bench", "scan speed: plain vs fast path, points/s, TFLOP/s, deviations"),
    "bench-ray": ("synthact.bench.ray_driver", "driver overhead of a Ray sweep with thousands of shards"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="synthact", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a sweep (default: the offline smoke job)", description=cmd_run.__doc__)
    p.add_argument("job", nargs="?", default=str(SMOKE_JOB), help="YAML job spec (default: jobs/smoke.yaml)")
    p.add_argument("--out", help="output directory or URI (default: the job's `output`, else runs/<job name>)")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: 'auto', 'local', or a cluster address")
    p.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="check an output directory's files against its manifest",
                       description=cmd_verify.__doc__)
    p.add_argument("out", help="output directory or URI of a sweep")
    p.add_argument("--deep", action="store_true", help="also read every row and the reference statistics")
    p.add_argument("--recompute", nargs="?", type=int, const=0, metavar="N",
                   help="also rebuild each row's base and target from the row alone, rescan it and compare its curves "
                        "and metrics: N bases per cell (a fixed sample), every base without N (loads the model)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("validate", help="check a job spec and print its grid", description=cmd_validate.__doc__)
    p.add_argument("job", nargs="?", help="YAML job spec")
    p.add_argument("--fields", action="store_true", help="print every spec field with its description (Markdown)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("compare", help="each kind against real, the differences between rungs, verdicts",
                       description=cmd_compare.__doc__)
    p.add_argument("out", help="output directory of a sweep (its results/ folder is read)")
    p.add_argument("--csv", metavar="FILE", help="also save the comparison table (every column) as CSV here, and "
                   "the differences between rungs beside it (FILE-differences.csv)")
    add_ray_argument(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="PNG figures and a self-contained HTML page of a sweep",
                       description=cmd_report.__doc__)
    p.add_argument("out", help="output directory of a sweep (its results/ folder is read)")
    p.add_argument("--html", metavar="FILE", help="where to write the HTML page (default: OUT/report.html)")
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
    """Run a sweep into an output directory; rerunning the same command resumes it."""
    from synthact.analysis import summary

    sweep = api.run_job(args.job, args.out, ray=args.ray, wandb=not args.no_wandb, progress=not args.no_progress)
    result = sweep.summary
    if result.redone:
        print(f"synthact: {len(result.redone)} finished shard(s) failed verification and were redone:", file=sys.stderr)
        for shard_id, problem in result.redone:
            print(f"  {shard_id}: {problem}", file=sys.stderr)
    print(summary.render(result, sweep.out, sweep.comparison, sweep.verdicts))
    return 0 if result.ok else 1


def add_ray_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="aggregate the cells as Ray tasks ('auto', 'local' or a cluster address); the results "
                             "and OUT/analysis must be on storage every node reaches")


def cmd_compare(args: argparse.Namespace) -> int:
    """Each kind against real along both axes: per compared cell and metric, mean +- std of both, the difference of
    means, the KS distance and the Wasserstein distance, each with a 95% bootstrap interval (paired over bases
    where the kinds share them), the KS permutation p-value, and the authors' reported values where the sweep's
    framing is theirs. Then the differences between rungs of the ladder (paired intervals, permutation p,
    Holm-adjusted p across the grid), one verdict line per paper finding, and the diagnostics of the built codes.
    Per-cell and per-panel numbers are cached under OUT/analysis/, so a rerun reads only what changed."""
    from synthact.analysis.compare import differences_path, save_csv
    from synthact.run.store import completion_note

    if note := completion_note(args.out):
        print(note + "\n")
    analysis = api.analyse(args.out, args.ray)
    print(analysis.text())
    if args.csv:
        saved = [save_csv(analysis.comparison, args.csv, "comparison"),
                 save_csv(analysis.differences, differences_path(args.csv), "differences")]
        print("\nSaved: " + ", ".join(map(str, saved)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write PNG figures (OUT/report/) and one self-contained HTML page (default OUT/report.html): the curves and
    metric distributions of each kind against real, the comparison and differences tables, the diagnostics."""
    from synthact.run.store import completion_note

    if note := completion_note(args.out):
        print(note)
    report = api.report(args.out, args.html, args.ray)
    print(f"{len(report.figures)} figures in {report.figure_dir}; page: {report.html}")
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
        print(f"cell {cell.cell_id} ({cell.label}): {cell.matched} of {cell.rows} rows recompute")
        for problem in cell.mismatches:
            print(f"  mismatch: {problem}")
    if args.recompute is not None:
        matched, rows = sum(c.matched for c in found.recomputed), sum(c.rows for c in found.recomputed)
        print(f"{uri}: {matched} of {rows} rows in {len(found.recomputed)} cell(s) recompute "
              f"({time.perf_counter() - started:.1f} s)")
    for shard_id, problem in found.bad:
        print(f"bad shard {shard_id}: {problem}")
    for path in found.strays:
        print(f"stray file (no manifest record; never read): {path}")
    for path, problem in found.bad_stats:
        print(f"damaged reference statistics {path}: {problem}")
    print(f"{uri}: {len(found.good)} shard(s) verified, {len(found.bad)} bad, {len(found.strays)} stray file(s)"
          + (f", {len(found.bad_stats)} damaged statistics" if found.bad_stats else "")
          + ("; rerun the same `synthact run` to redo the bad shards and statistics" if found.bad or found.bad_stats
             else "")
          + ("; stray files are never read: move them out of results/" if found.strays else ""))
    return 0 if found.ok else 1


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a job spec and print its grid without loading any model (or, with --fields, list the fields)."""
    import pandas as pd

    if args.fields:
        print(api.field_reference())
        return 0
    if not args.job:
        raise SynthactError("give a job spec to validate (e.g. synthact validate jobs/smoke.yaml), or --fields")
    job = api.load_job(args.job)
    cells = api.grid(job)
    size = api.grid_size(job)
    print(f"job '{job.name}': valid (spec hash {job.spec_hash[:12]})")
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(cells.drop(columns=["model", "sae"]).to_string(index=False))
    print(
        f"{size['cells']} cells x {job.bases_per_cell} bases = {size['curves']} curves "
        f"({len(job.read_layers)} read layer(s)); {size['shards']} shards of <= {job.shard_size} bases; "
        f"{size['scan_points']:,} scan points (forward passes of one position through the read layers)."
    )
    print(f"models: {', '.join(m.label for m in job.model)}; SAEs: {', '.join(s.label for s in job.sae)}")
    from synthact.analysis.inference import detectable_ks_difference

    print(f"power: with {job.bases_per_cell} bases per kind the two-sample KS test (alpha 0.05) detects a KS distance "
          f"of {detectable_ks_difference(job.bases_per_cell):.3f} between two kinds with 80% power")
    print(api.memory_estimate(job))  # memory per worker and downloads (inputs/memory.py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
