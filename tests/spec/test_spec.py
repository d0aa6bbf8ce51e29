"""The job spec: validation messages, the grid, ids and seeds."""

import json
from pathlib import Path

import pytest
import yaml

from synthact.spec import KINDS, SpecError, derive_seed, load_job, parse_job
from tests.helpers import toy_job

ROOT = Path(__file__).resolve().parents[2]


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse_job(data)
    return str(e.value)


def test_shipped_jobs_validate():
    for path in (ROOT / "jobs").glob("*.yaml"):
        job = load_job(path)
        assert job.cells(), path


def test_smoke_job_covers_every_kind_and_direction():
    job = load_job(ROOT / "jobs" / "smoke.yaml")
    assert set(job.base_kinds) == set(KINDS)
    heads = {d.split(":")[0] for d in job.directions}
    assert heads == {"toward", "isotropic", "latent", "toward_recon"}
    assert len(job.layers) == 2 and job.js


def test_unknown_key_is_named():
    msg = error_of(toy_job(scna={"steps": 3}))
    assert "unknown key 'scna'" in msg


def test_unknown_nested_key_is_named():
    msg = error_of(toy_job(metrics={"stepz": 3}))
    assert "unknown key 'metrics.stepz'" in msg and "did you mean" not in msg  # nothing near it


@pytest.mark.parametrize("fields, unknown, near", [
    ({"bases_per_cel": 3}, "bases_per_cel", "bases_per_cell"),
    ({"metrics": {"slope_treshold": 0.1}}, "metrics.slope_treshold", "slope_threshold"),
    ({"generation": {"nearst_k": [5]}}, "generation.nearst_k", "nearest_k"),
    ({"model": {"toy": {"n_layer": 4}}}, "model[0].toy.n_layer", "n_layers"),
    ({"scan": [{"step_sise": 0.5}]}, "scan[0].step_sise", "step_size"),
])
def test_an_unknown_key_gets_the_nearest_known_name(fields, unknown, near):
    assert f"unknown key '{unknown}': did you mean '{near}'?" in error_of(toy_job(**fields))


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path):
    """YAML keeps the last of two equal keys without a word; a job spec refuses them, nested or at the top."""
    base = yaml.safe_dump(toy_job(bases_per_cell=10))
    for extra, key in (("scan:\n  steps: 10\n  steps: 20\n", "steps"), ("bases_per_cell: 3\n", "bases_per_cell")):
        path = tmp_path / "j.yaml"
        path.write_text(base + extra)
        lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line.strip().startswith(f"{key}:")]
        with pytest.raises(SpecError) as e:
            load_job(path)
        assert f"line {lines[1]}: key '{key}' is given twice (first on line {lines[0]})" in str(e.value), str(e.value)


@pytest.mark.parametrize("fields, needle", [
    ({"bases_per_cell": True}, "bases_per_cell: expects a whole number, not true (a boolean)"),
    ({"shard_size": "4"}, "shard_size: expects a whole number, not '4'"),
    ({"scan": {"step_size": False}}, "scan[0].step_size: expects a number, not false (a boolean)"),
    ({"metrics": {"plateau_threshold": "20"}}, "metrics.plateau_threshold: expects a number, not '20'"),
    ({"generation": {"nearest_k": [True]}}, "generation.nearest_k[0]: expects a whole number, not true"),
    ({"scan": {"steps": 10.5}}, "scan[0].steps: Input should be a valid integer"),
])
def test_a_boolean_or_a_string_is_not_a_number(fields, needle):
    assert needle in error_of(toy_job(**fields))


def test_an_integer_is_a_fine_float():
    job = parse_job(toy_job(scan={"steps": 10, "step_size": 1}, metrics={"plateau_threshold": 20}))
    assert job.scan[0].step_size == 1.0 and isinstance(job.scan[0].step_size, float)


def test_overrides_change_fields_by_dotted_keys_and_list_elements(tmp_path):
    path = tmp_path / "j.yaml"
    path.write_text(yaml.safe_dump(toy_job(scan=[{"name": "a", "steps": 10}, {"name": "b", "steps": 20}])))
    job = load_job(path, ["seed=3", "scan.1.steps=30", "metrics.cut=before_target", "layers=[1, 2]",
                          "generation.nearest_k=[5, 10]", "wandb=false"])
    assert (job.seed, [s.steps for s in job.scan], job.metrics.cut, job.layers) == (3, [10, 30], "before_target", [1, 2])
    assert job.generation.nearest_k == [5, 10] and job.wandb.enabled is False
    assert load_job(path).seed == 0  # the file is unchanged


@pytest.mark.parametrize("override, needle", [
    ("bases_per_cel=3", "with bases_per_cel=3 is invalid:\n  - unknown key 'bases_per_cel': did you mean 'bases_per_cell'?"),
    ("bases_per_cell=true", "bases_per_cell: expects a whole number, not true (a boolean)"),
    ("scan.3.steps=5", "override 'scan.3.steps=5': '3' is not an element of a list of 2 (0..1)"),
    ("seed", "'seed' is not an override; write key=value"),
    ("layers=[1", "override 'layers=[1': the value is not valid YAML"),
    ("name.x=1", "override 'name.x=1': name is 't', not a section with fields"),
])
def test_a_bad_override_is_refused_like_the_file(tmp_path, override, needle):
    path = tmp_path / "j.yaml"
    path.write_text(yaml.safe_dump(toy_job(scan=[{"name": "a", "steps": 10}, {"name": "b", "steps": 20}])))
    with pytest.raises(SpecError) as e:
        load_job(path, [override])
    assert needle in str(e.value), str(e.value)


def test_layer_out_of_range_for_toy_model():
    msg = error_of(toy_job(layers=[9]))
    assert "layer 9 is out of range" in msg and "0..3" in msg


def test_read_layer_before_perturbation_layer():
    msg = error_of(toy_job(layers=[2], read_layers=[1]))
    assert "read layer 1" in msg and "comes before perturbation layer 2" in msg


def test_empty_axis_is_an_empty_grid():
    msg = error_of(toy_job(base_kinds=[]))
    assert "grid is empty" in msg


def test_unknown_direction_and_kind():
    assert "unknown direction 'towards:real'" in error_of(toy_job(directions=["towards:real"]))
    assert "base_kinds" in error_of(toy_job(base_kinds=["fake"]))


def test_interpolate_needs_a_target():
    msg = error_of(toy_job(scan={"mode": "interpolate"}))
    assert "needs a target" in msg


def test_model_needs_exactly_one_source():
    msg = error_of(toy_job(model={"pretrained": "gpt2", "toy": {}}))
    assert "exactly one of" in msg


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")


def test_grid_expansion_and_shards():
    job = parse_job(toy_job(generation={"structure": ["anchor", "pairwise"], "candidates": [1, 8]},
                            directions=["toward:same", "toward:real"]))
    cells = job.cells()
    # real x toward:same, real x toward:real: no generation axes; structured x 2 directions x (anchor, 2 C)
    assert len(cells) == 2 + 6
    assert len({c.cell_id for c in cells}) == len(cells)
    shards = job.shards()
    assert len(shards) == len(cells) * 3
    assert [s.n_bases for s in shards[:3]] == [4, 4, 2]
    structured = [c for c in cells if c.base_kind == "synthetic_structured"]
    assert {c.candidates for c in structured} == {None, 1, 8}
    assert {c.anchor_cos for c in structured if c.structure == "anchor"} == {0.42}
    assert all(c.anchor_cos is None and c.tol == 0.1 for c in structured if c.structure == "pairwise")
    assert {c.target_kind for c in structured if c.direction == "toward:same"} == {"synthetic_structured"}


def test_bases_are_shared_across_directions_but_not_kinds():
    job = parse_job(toy_job())
    by = {(c.base_kind, c.direction): c for c in job.cells()}
    assert by[("real", "toward:same")].base_settings() == by[("real", "isotropic")].base_settings()
    assert by[("real", "isotropic")].base_settings() != by[("synthetic_structured", "isotropic")].base_settings()
    assert by[("real", "toward:same")].cell_id != by[("real", "isotropic")].cell_id


def test_ids_and_seeds_are_stable():
    a, b = parse_job(toy_job()), parse_job(yaml.safe_load(yaml.safe_dump(toy_job())))
    assert [c.cell_id for c in a.cells()] == [c.cell_id for c in b.cells()]
    assert a.spec_hash == b.spec_hash
    assert parse_job(toy_job(seed=1)).spec_hash != a.spec_hash
    assert derive_seed(0, "base", 1) == derive_seed(0, "base", 1) != derive_seed(0, "base", 2)
    assert 0 <= derive_seed(0, "x") < 2**63


def test_wandb_false_shorthand():
    assert parse_job(toy_job(wandb=False)).wandb.enabled is False


def test_field_reference_is_current_and_complete():
    from synthact.spec import Job, field_reference

    text = field_reference()
    assert (ROOT / "docs" / "spec.md").read_text().strip() == text.strip(), "regenerate: synthact validate --fields > docs/spec.md"
    for name in Job.model_fields:
        assert f"| `{name}` |" in text


def test_paper_axes_scans_and_templates():
    job = parse_job(toy_job(
        base_kinds=["real"], directions=["toward:real", "toward:synthetic_baseline", "isotropic"],
        generation={"template": ["base", "independent"], "match": ["nearest_k", "tol"]},
        scan=[{"name": "sensitivity", "mode": "step", "steps": 99}, {"name": "plateaus", "steps": 60}],
    ))
    cells = job.cells()
    # per scan: toward:real, isotropic (no generation axes) + baseline x 2 templates x 2 matches
    assert len(cells) == 2 * (2 + 4)
    assert {c.settings()["scan"] for c in cells} == {"sensitivity", "plateaus"}
    baseline = [c for c in cells if c.target_kind == "synthetic_baseline"]
    assert {(c.template, c.match, c.nearest_k, c.tol) for c in baseline} == {
        ("base", "nearest_k", 10, None), ("independent", "nearest_k", 10, None),
        ("base", "tol", None, 0.1), ("independent", "tol", None, 0.1)}
    assert all(c.structure is None and c.candidates is None for c in baseline)
    # the same bases in every scan, direction and target
    assert len({json.dumps(c.base_settings(), sort_keys=True) for c in cells}) == 1
    assert "distinct names" in error_of(toy_job(scan=[{"steps": 10}, {"steps": 20}]))
    assert "needs real bases" in error_of(toy_job(base_kinds=["gaussian"], directions=["toward:random_latents"],
                                                  generation={"add_error": [True]}))


def test_defaults_are_the_papers():
    job = parse_job(toy_job())
    g = job.generation
    assert (g.template, g.match, g.nearest_k, g.structure, g.anchor_cos, g.anchor_pool) == (
        ["base"], ["nearest_k"], [10], ["anchor"], [0.42], [100])
    assert (g.value_source, g.match_norm, g.exclude_template) == (["template"], [False], [True])
    assert (job.metrics.slope_threshold, job.metrics.plateau_threshold, job.metrics.plateau_mode) == (
        0.02, 20.0, "absolute")
    assert job.scan[0].stop_at_target
