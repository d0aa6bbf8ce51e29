"""`synthact verify OUT --recompute` (run/recompute.py): every stored row checked against its cell and rebuilt from
itself, rescanned and compared with tolerances derived from the arithmetic (run/tolerances.py); a changed,
duplicated or missing row is named, and only that row."""

import copy
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from synthact import api
from synthact.inputs.hooks import resid_post
from synthact.results import read_table
from synthact.run.local_executor import load_worker, run_local
from synthact.run.recompute import check_rows, compare_row, rebuild, recompute, rescan_bases
from synthact.run.store import Store
from synthact.scan.metrics import curve_metrics, metric_ranges
from synthact.spec import KINDS, MetricsSpec, parse_job
from tests.helpers import synthact, toy_job

ROOT = Path(__file__).resolve().parents[2]
COMMON = dict(read_layers=[2, -1], bases_per_cell=2, shard_size=2, reference={"n_prompts": 256}, device="cpu",
              wandb=False)
# Every kind as base and target, both scan framings (from A, interpolating; from T towards A, stepping), with JS.
EVERY_KIND = dict(name="every-kind", base_kinds=list(KINDS), directions=["toward:same", "toward_recon"],
                  scan=[{"name": "from-a", "mode": "interpolate", "steps": 8},
                        {"name": "from-t", "steps": 12, "step_size": 0.5, "start": "target"}], js=True, **COMMON)
# The directions without a target, with the JS curve; four bases in shards of two.
NO_TARGET = dict(name="no-target", base_kinds=["real", "gaussian"], directions=["isotropic", "latent:random"],
                 scan={"steps": 12, "step_size": 0.5}, js=True, **(COMMON | {"bases_per_cell": 4}))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    out = {}
    for spec in (EVERY_KIND, NO_TARGET):
        job = parse_job(toy_job(**spec))
        out[spec["name"]] = (job, tmp_path_factory.mktemp(spec["name"]))
        assert run_local(job, Store(out[spec["name"]][1], job), progress=False).ok
    return out


def cell_rows(job, out, pick):
    """(worker, cell, its rows sorted by base and read layer) of the first cell `pick(cell)` accepts."""
    cell = next(c for c in job.cells() if pick(c))
    rows = read_table(out, cell_id=cell.cell_id).to_pandas().sort_values(["base_index", "read_layer"])
    return load_worker(job, cell.group, str(out / "stats")), cell, rows.reset_index(drop=True)


@pytest.mark.parametrize("name", ["every-kind", "no-target"])
def test_every_stored_row_recomputes(sweeps, name):
    job, out = sweeps[name]
    checks = recompute(out)
    assert len(checks) == len(job.cells()) and all(c.ok and not c.mismatches for c in checks), \
        [m for c in checks for m in c.mismatches][:5]
    assert sum(c.rows for c in checks) == sum(c.expected for c in checks) == read_table(out, ["cell_id"]).num_rows
    if name == "every-kind":
        assert {c.label.split()[2] for c in checks} == set(KINDS)


# ---------------------------------------------------------------------- tolerances from the arithmetic


def float64_scan(model64, hook, row, a, t, d, read_layers, js):
    """The row's scan in float64 end to end (the plain path on a float64 copy of the model): curves whose rounding
    differs from the float32 ones as another machine's would, only far less."""
    a, d = a.double(), d.double()
    t = None if t is None else t.double()
    steps = int(row.steps)
    step = float(row.step_size) if row.scan_mode == "step" else float((t - a).norm()) / steps
    start, direction = (t, -d) if row.scan_start == "target" else (a, d)
    points = start + (torch.arange(steps + 1, dtype=torch.float64) * step)[:, None] * direction

    def place(resid, hook):
        resid[:, -1, :] = points
        return resid

    tokens = torch.as_tensor(np.asarray(row.base_tokens, np.int64)).expand(steps + 1, -1)
    with torch.no_grad(), model64.hooks(fwd_hooks=[(hook, place)]):
        logits, cache = model64.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    l2 = {r: (cache[resid_post(r)][:, -1] - cache[resid_post(r)][:1, -1]).norm(dim=-1).numpy() for r in read_layers}
    if not js:
        return l2, None
    logp, logq = F.log_softmax(logits[:, -1], -1), F.log_softmax(logits[:1, -1], -1)
    diff, ln2 = logq - logp, math.log(2)
    bits = (-(logp.exp() * (F.softplus(diff) - ln2)).sum(-1) - (logq.exp() * (F.softplus(-diff) - ln2)).sum(-1)) / 2 / ln2
    return l2, bits.clamp(0, 1).sqrt().numpy()


@pytest.mark.parametrize("name", ["every-kind", "no-target"])
def test_the_tolerances_accept_a_float64_recomputation_of_float32_rows_and_reject_an_edit(sweeps, name):
    """Stored float32 rows against the same scans in float64: every difference is rounding, of the kind another
    CPU's summation order gives, and the derived tolerances accept it; a 1% edit of a curve point is still refused."""
    job, out = sweeps[name]
    rows = read_table(out).to_pandas()
    cells = {c.cell_id: c for c in job.cells()}
    worker = load_worker(job, job.cells()[0].group, str(out / "stats"))
    model64 = copy.deepcopy(worker.backend.model.model).double()
    hook = worker.backend.saes[1].hook_name
    ratios, edits = [], 0
    for _, row in rows.iterrows():
        again = rescan_bases(worker, cells[row.cell_id], [row])[0]  # float32 on this machine: the scales
        with torch.no_grad():
            a, t, d = rebuild(row, worker.context(1))
        l2, js = float64_scan(model64, hook, row, a, t, d, worker.read_layers, job.js)
        again.l2, again.js = l2, js
        if t is not None:
            again.distance = float((t.double() - a.double()).norm())
        assert compare_row(row, again) == [], (row.base_kind, row.direction, row.scan, compare_row(row, again))
        r = int(row.read_layer)
        tolerance = again.arithmetic.l2(r + 1, again.start_norm[r], float(l2[r].max()))
        ratios.append(np.abs(np.asarray(row.l2_curve) - l2[r]).max() / tolerance)
        for name_, curve in (("l2_curve", row.l2_curve), ("js_curve", row.js_curve)):
            edited = row.copy()
            changed = np.array(curve, np.float64)
            n = int(np.argmax(changed))
            changed[n] *= 1.01
            edited[name_] = changed
            assert any(p.startswith(f"{name_} off by") for p in compare_row(edited, again)), (name_, row.base_kind)
            edits += 1
    assert edits == 2 * len(rows) and max(ratios) < 1  # (the toy: at most a few percent of the tolerance)


def test_an_integer_metric_near_its_threshold_may_take_either_side():
    """Without a stored curve the metrics come from the rescan: a curve that crosses the plateau threshold within
    its tolerance may give either step, one that crosses it clearly only one; near-equal slopes likewise."""
    curve = np.array([0.0, 5.0, 10.0, 19.99995, 25.0, 30.0])
    exact = curve_metrics(curve[None], np.array([1.0]))
    assert exact["plateau_len"][0] == 4
    ranges = metric_ranges(curve, 1e-4, 1.0)
    assert ranges["plateau_len"] == {3, 4} and metric_ranges(curve, 1e-6, 1.0)["plateau_len"] == {4}
    assert ranges["max_slope_step"] == {3} and ranges["final_l2"][0] < 30.0 < ranges["final_l2"][1]
    tied = np.array([0.0, 1.0, 3.0, 5.00001, 6.0])  # slopes 1, 2, 2.00001, 0.99999: step 2 or 3
    assert metric_ranges(tied, 1e-4, 1.0)["max_slope_step"] == {2, 3}
    assert metric_ranges(tied, 1e-7, 1.0)["max_slope_step"] == {3}
    flat = np.zeros(5)  # no slope exceeds the threshold: the fallback, or a slope only rounding could make
    assert metric_ranges(flat, 1e-7, 1.0, settings=MetricsSpec(slope_threshold=0.02))["max_slope_step"] == {4}


def test_rows_without_stored_curves_recompute_from_the_rescan_within_the_tolerance(sweeps):
    job, out = sweeps["every-kind"]
    worker, cell, rows = cell_rows(job, out, lambda c: c.scan.start == "target" and c.base_kind == "real")
    bare = rows.drop(columns=["l2_curve", "js_curve"])
    assert check_rows(worker, cell, bare).ok
    bare.loc[1, "plateau_len"] += 3
    found = check_rows(worker, cell, bare)
    assert found.matched == len(rows) - 1 and len(found.mismatches) == 1 and "plateau_len" in found.mismatches[0]


# ---------------------------------------------------------------------- each row's own settings, against its cell


def test_a_changed_curve_or_metric_is_named(sweeps):
    job, out = sweeps["every-kind"]
    worker, cell, rows = cell_rows(job, out, lambda c: c.scan.start == "target" and c.base_kind == "synthetic_cooccur")
    assert check_rows(worker, cell, rows, batch=2).ok
    changed = rows.copy()
    curve = np.array(changed.l2_curve.iloc[1], np.float32)
    curve[5] += 0.01 * curve.max()
    changed["l2_curve"] = [curve if i == 1 else c for i, c in enumerate(changed.l2_curve)]
    changed.loc[changed.index[2], "plateau_len"] += 1
    found = check_rows(worker, cell, changed, batch=2)
    assert not found.ok and found.matched == found.rows - 2 == len(rows) - 2
    first, second = (changed.iloc[i] for i in (1, 2))
    assert found.mismatches[0].startswith(f"base {first.base_index} read layer {first.read_layer}: ")
    assert "l2_curve off by" in found.mismatches[0]
    assert found.mismatches[1].startswith(f"base {second.base_index} read layer {second.read_layer}: plateau_len ")


EDITS = [("step_size", 0.6), ("steps", 13), ("plateau_threshold", 25.0), ("slope_threshold", 0.5),
         ("direction", "latent:random"), ("cell_id", "000000000000"), ("base_seed", 12345), ("target_seed", 7),
         ("scan_start", "target"), ("stop_at_target", False), ("seed", 3), ("base_index", 1),
         ("shard_id", "x-00000")]


@pytest.mark.parametrize("row", [0, 5])  # the first row of a batch, and one inside it
@pytest.mark.parametrize("column, value", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_setting_fails_that_row_only(sweeps, column, value, row):
    """Each row is checked with its own scan and metric settings, against what its cell must hold: an edit in any
    row fails that row, naming the column, and every other row of its batch still recomputes."""
    job, out = sweeps["no-target"]
    worker, cell, rows = cell_rows(job, out, lambda c: c.direction == "isotropic" and c.base_kind == "real")
    assert check_rows(worker, cell, rows, batch=4).ok and len(rows) == 8
    edited = rows.copy()
    edited.loc[row, column] = value
    found = check_rows(worker, cell, edited, batch=4)
    assert found.rows == 8 and found.matched == 7, found.mismatches
    if column == "base_index":  # now a second base-1 curve that holds base 0's seeds; base 0's curve is missing
        assert "base_seed" in found.mismatches[0] and "missing" in found.mismatches[1], found.mismatches
    else:
        where = f"base {rows.base_index[row]} read layer {rows.read_layer[row]}: "
        assert len(found.mismatches) == 1 and found.mismatches[0].startswith(where + column), found.mismatches


def test_a_duplicated_row_is_named_and_a_cell_holds_its_own_count(sweeps):
    """A cell of 4 bases at 2 read layers holds 8 rows: 9 with a copied row are not "9 of 9", 7 are not "7 of 7"."""
    job, out = sweeps["no-target"]
    worker, cell, rows = cell_rows(job, out, lambda c: c.direction == "latent:random" and c.base_kind == "gaussian")
    doubled = check_rows(worker, cell, rows.iloc[[*range(8), 5]])
    assert (doubled.rows, doubled.matched, doubled.expected) == (9, 8, 8) and not doubled.ok
    second = "a second row for this curve (a cell holds one per base and read layer)"
    assert doubled.mismatches == [f"base {rows.base_index[5]} read layer {rows.read_layer[5]}: {second}"]
    short = check_rows(worker, cell, rows.iloc[1:])
    assert (short.rows, short.matched, short.expected) == (7, 7, 8) and not short.ok
    assert short.mismatches == [f"base 0 read layer {rows.read_layer[0]}: missing (the cell has no row for it)"]


def test_a_sample_of_bases_per_cell_with_a_fixed_seed(sweeps):
    job, out = sweeps["no-target"]
    found = api.verify(out, recompute=1)
    assert found.ok and [c.rows for c in found.recomputed] == [len(job.read_layers)] * len(job.cells())
    assert api.verify(out).recomputed == []


def test_cli_exit_codes(sweeps, tmp_path):
    job, out = sweeps["no-target"]
    code, printed, _ = run_cli("verify", str(out), "--recompute")
    rows = job.bases_per_cell * 2
    assert code == 0 and f"{rows} of {rows} rows recompute" in printed
    # a sweep whose stored curve (first row) and step_size (a later row) differ from the cell, written through the store
    altered = tmp_path / "altered"
    store = Store(altered, job)
    worker = load_worker(job, job.cells()[0].group, store.stats_root)
    for i, shard in enumerate(job.shards()):
        table = worker.run_shard(shard)
        if i == 0:
            curves = table["l2_curve"].to_pylist()
            curves[0] = [d * 1.01 for d in curves[0]]
            steps = table["step_size"].to_pylist()
            steps[3] = 0.6
            table = table.set_column(table.schema.get_field_index("l2_curve"), "l2_curve",
                                     pa.array(curves, table.schema.field("l2_curve").type))
            table = table.set_column(table.schema.get_field_index("step_size"), "step_size", pa.array(steps))
        store.write_shard(shard, table)
    code, printed, _ = run_cli("verify", str(altered), "--recompute", str(job.bases_per_cell))  # N = all here
    assert code == 1 and "mismatch: base " in printed and "l2_curve off by" in printed, printed
    total = rows * len(job.cells())
    assert "step_size 0.6, but its cell's is 0.5" in printed and f"{total - 2} of {total} rows" in printed
    code, _, err = run_cli("verify", str(tmp_path / "nothing-here"), "--recompute")
    assert code == 2 and "not a synthact output directory" in err


def run_cli(*args):
    done = synthact(*args)
    return done.returncode, done.stdout, done.stderr


# ---------------------------------------------------------------------- every job of jobs/, made tiny


TINY = ["bases_per_cell=2", "shard_size=2", "reference.n_prompts=256", "wandb=false", "device=cpu"]
TOY_JOBS = {  # each shipped toy job (and layers.yaml on the toy), two bases a cell and short scans
    "smoke": ["scan.steps=8"],
    "paper-toy": ["scan.0.steps=8", "scan.1.steps=8", "scan.2.steps=8"],
    "ladder-toy": ["scan.0.steps=8"],
    "layers": ["model={toy: {}}", "sae={toy: {}}", "corpus={toy: {}}", "layers=[1, 2]", "scan.steps=8"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TOY_JOBS)
def test_every_toy_job_recomputes_and_an_edited_row_fails_alone(name, tmp_path):
    job = api.load_job(ROOT / "jobs" / f"{name}.yaml", [*TINY, *TOY_JOBS[name]])
    assert run_local(job, Store(tmp_path, job), progress=False).ok
    checks = recompute(tmp_path)
    assert len(checks) == len(job.cells()) and all(c.ok for c in checks), [m for c in checks for m in c.mismatches][:5]
    assert sum(c.rows for c in checks) == sum(c.expected for c in checks) == len(job.cells()) * 2
    worker, cell, rows = cell_rows(job, tmp_path, lambda c: c.base_kind == "real" and c.target_kind is not None)
    for column, value in [("step_size", 0.25), ("steps", 9), ("plateau_threshold", 1.0), ("direction", "isotropic"),
                          ("cell_id", "000000000000"), ("base_seed", 1), ("target_seed", 1)]:
        edited = rows.copy()
        edited.loc[1, column] = value
        found = check_rows(worker, cell, edited)
        assert found.matched == 1 and len(found.mismatches) == 1 and column in found.mismatches[0], found.mismatches
    doubled = check_rows(worker, cell, rows.iloc[[0, 1, 1]])
    assert (doubled.rows, doubled.matched, doubled.expected) == (3, 2, 2) and "a second row" in doubled.mismatches[0]
