"""The ladder's generation settings in the spec: removed settings named with their reason, controls that keep
their definition, and the swapped control that would be its own base refused before anything runs."""

import json

import pytest
import yaml

from synthact.spec import SpecError, parse_job
from tests.helpers import synthact, toy_job

LADDER = {"base_kinds": ["real"], "directions": ["toward:control_swapped", "toward:synthetic_cooccur"]}


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse_job(data)
    return str(e.value)


def test_the_removed_top_m_cap_is_refused_with_its_reason():
    msg = error_of(toy_job(**LADDER, generation={"cooccur_top_m": [64]}))
    assert "cooccur_top_m was removed" in msg and "counted exactly" in msg


def test_ranked_values_are_refused_with_what_replaces_them():
    msg = error_of(toy_job(**LADDER, generation={"value_source": ["template", "ranked"]}))
    assert "'ranked' was removed" in msg and "quantile" in msg


def test_controls_take_only_the_value_sources_that_keep_the_templates_values():
    job = parse_job(toy_job(base_kinds=["real"], directions=["toward:control_swapped", "toward:control_other_latents",
                                                             "toward:synthetic_cooccur"],
                            generation={"value_source": ["template", "quantile", "permuted"]}))
    by_kind = {}
    for cell in job.cells():
        by_kind.setdefault(cell.target_kind, set()).add(cell.value_source)
    assert by_kind["control_swapped"] == by_kind["control_other_latents"] == {"template", "permuted"}
    assert by_kind["synthetic_cooccur"] == {"template", "quantile", "permuted"}
    # Quantile values come from the pool's statistics part: their cells record its holdout.
    assert all(c.holdout == 0.25 for c in job.cells() if c.value_source == "quantile")


def test_controls_without_a_value_source_that_keeps_the_values_are_refused():
    msg = error_of(toy_job(**LADDER, generation={"value_source": ["quantile"]}))
    assert "control_swapped keep the template's values" in msg and "add template" in msg


def test_swapped_with_no_swaps_and_the_bases_own_error_is_refused_by_validate(tmp_path):
    spec = toy_job(**LADDER, generation={"swaps": [0, 2], "add_error": [True]})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = synthact("validate", str(path))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "swaps 0" in message and "rebuilds the base A itself" in message and "Traceback" not in message
    assert "\n\n" not in message  # one paragraph
    # With the transplanted error, or without an error, swaps 0 is a target distinct from A.
    for generation in ({"swaps": [0], "add_error": [True], "error_source": ["other"]}, {"swaps": [0]},
                       {"swaps": [0], "add_error": [True], "value_source": ["permuted"]}):
        assert parse_job(toy_job(**LADDER, generation=generation)).cells()


def test_an_output_directory_written_with_the_top_m_cap_is_refused_for_recompute_with_the_reason(tmp_path):
    job = parse_job(toy_job(**LADDER))
    spec = job.canonical()
    spec["generation"]["cooccur_top_m"] = [64]  # what every job.json of an earlier synthact holds
    (tmp_path / "job.json").write_text(json.dumps({"spec_hash": job.spec_hash, "spec": spec, "inputs": {}}))
    result = synthact("verify", str(tmp_path), "--recompute")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot be recomputed" in result.stderr and "cooccur_top_m was removed" in result.stderr
