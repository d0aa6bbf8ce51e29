"""`synthact verify OUT --recompute [N]` (run/recompute.py): every stored curve and metric rebuilt from its row alone,
rescanned, and compared; a changed row is named."""

import numpy as np
import pyarrow as pa
import pytest

from synthact import api
from synthact.results import read_table
from synthact.run.local_executor import load_worker, run_local
from synthact.run.recompute import check_rows, recompute
from synthact.run.store import Store
from synthact.spec import KINDS, parse_job
from tests.helpers import synthact, toy_job

COMMON = dict(read_layers=[2, -1], bases_per_cell=2, shard_size=2, reference={"n_prompts": 256}, device="cpu",
              wandb=False)
# Every kind as base and target, both scan framings (from A, interpolating; from T towards A, stepping).
EVERY_KIND = dict(name="every-kind", base_kinds=list(KINDS), directions=["toward:same", "toward_recon"],
                  scan=[{"name": "from-a", "mode": "interpolate", "steps": 8},
                        {"name": "from-t", "steps": 12, "step_size": 0.5, "start": "target"}], **COMMON)
# The directions without a target, with the JS curve.
NO_TARGET = dict(name="no-target", base_kinds=["real", "gaussian"], directions=["isotropic", "latent:random"],
                 scan={"steps": 12, "step_size": 0.5}, js=True, **COMMON)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    out = {}
    for spec in (EVERY_KIND, NO_TARGET):
        job = parse_job(toy_job(**spec))
        out[spec["name"]] = (job, tmp_path_factory.mktemp(spec["name"]))
        assert run_local(job, Store(out[spec["name"]][1], job), progress=False).ok
    return out


@pytest.mark.parametrize("name", ["every-kind", "no-target"])
def test_every_stored_row_recomputes(sweeps, name):
    job, out = sweeps[name]
    checks = recompute(out)
    assert len(checks) == len(job.cells()) and all(c.ok and not c.mismatches for c in checks)
    assert sum(c.rows for c in checks) == read_table(out, ["cell_id"]).num_rows
    if name == "every-kind":
        assert {c.label.split()[2] for c in checks} == set(KINDS)


def test_a_sample_of_bases_per_cell_with_a_fixed_seed(sweeps):
    job, out = sweeps["no-target"]
    found = api.verify(out, recompute=1)
    assert found.ok and [c.rows for c in found.recomputed] == [len(job.read_layers)] * len(job.cells())
    assert api.verify(out).recomputed == []


def test_a_changed_curve_or_metric_is_named(sweeps):
    job, out = sweeps["every-kind"]
    cell = next(c for c in job.cells() if c.scan.start == "target" and c.base_kind == "synthetic_cooccur")
    rows = read_table(out, cell_id=cell.cell_id).to_pandas().sort_values(["base_index", "read_layer"])
    worker = load_worker(job, cell.group, str(out / "stats"))
    assert check_rows(worker, rows, batch=2).ok
    changed = rows.copy()
    curve = np.array(changed.l2_curve.iloc[1], np.float32)
    curve[5] += 0.01 * curve.max()
    changed["l2_curve"] = [curve if i == 1 else c for i, c in enumerate(changed.l2_curve)]
    changed.loc[changed.index[2], "plateau_len"] += 1
    found = check_rows(worker, changed, batch=2)
    assert not found.ok and found.matched == found.rows - 2 == len(rows) - 2
    first, second = (changed.iloc[i] for i in (1, 2))
    assert found.mismatches[0].startswith(f"base {first.base_index} read layer {first.read_layer}: ")
    assert "l2_curve off by" in found.mismatches[0]
    assert found.mismatches[1].startswith(f"base {second.base_index} read layer {second.read_layer}: plateau_len ")


def test_cli_exit_codes(sweeps, tmp_path):
    job, out = sweeps["no-target"]
    code, printed, _ = run_cli("verify", str(out), "--recompute")
    assert code == 0 and f"{job.bases_per_cell * 2} of {job.bases_per_cell * 2} rows recompute" in printed
    # a sweep whose stored curve differs from what its row recomputes, written through the store
    altered = tmp_path / "altered"
    store = Store(altered, job)
    worker = load_worker(job, job.cells()[0].group, store.stats_root)
    for i, shard in enumerate(job.shards()):
        table = worker.run_shard(shard)
        if i == 0:
            curves = table["l2_curve"].to_pylist()
            curves[0] = [d * 1.01 for d in curves[0]]
            column = table.schema.get_field_index("l2_curve")
            table = table.set_column(column, "l2_curve", pa.array(curves, table.schema.field(column).type))
        store.write_shard(shard, table)
    code, printed, _ = run_cli("verify", str(altered), "--recompute", str(job.bases_per_cell))  # N = all here
    assert code == 1 and "mismatch: base " in printed and "l2_curve off by" in printed
    code, _, err = run_cli("verify", str(tmp_path / "nothing-here"), "--recompute")
    assert code == 2 and "not a synthact output directory" in err


def run_cli(*args):
    done = synthact(*args)
    return done.returncode, done.stdout, done.stderr
