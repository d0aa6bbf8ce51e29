"""`synthact bench --analysis`: the synthetic results directory is a valid sweep, and a command is timed with its RSS."""

from __future__ import annotations

import numpy as np

from synthact import results
from synthact.analysis import aggregate
from synthact.analysis.cells import Sweep
from synthact.bench.analysis import PAPER_TOY, build, format_analysis, timed
from synthact.spec import load_job


def test_built_directory_is_the_paper_toy_grid_with_curves(tmp_path):
    cells = len(load_job(PAPER_TOY).cells())
    size = build(tmp_path / "out", cells * 30)
    assert size["rows"] == cells * 30 and size["cells"] == cells
    sweep = Sweep.open(tmp_path / "out")
    assert len(sweep.cells) == cells and sweep.curves == cells * 30
    assert set(sweep.aggregates.target_kind) == {"real", "gaussian", "sae_recon", "synthetic_baseline",
                                                 "synthetic_structured", "single_latent", "random_latents"}
    bands = sweep.bands()
    assert len(bands) == cells and all(len(m) == 100 or len(m) == 101 for m in bands["mean"])
    table = results.read_table(tmp_path / "out", ["l2_curve", "max_slope_step"], cell_id=sweep.aggregates.cell_id[0])
    assert table.num_rows == 30 and table.column("max_slope_step").null_count == 0


def test_built_cells_pair_base_by_base_as_the_papers_design(tmp_path):
    cells = len(load_job(PAPER_TOY).cells())
    build(tmp_path / "out", cells * 40)
    sweep = Sweep.open(tmp_path / "out")
    first, *others = sweep.aggregates[sweep.aggregates.read_layer == sweep.aggregates.read_layer.max()].cell_id
    seeds, values = sweep.by_base(first, int(sweep.aggregates.read_layer.max()), "max_slope_step")
    assert np.unique(seeds).size == 40
    for other in others:  # every cell built for the same bases (the base seeds `synthact run` derives)
        other_seeds, other_values = sweep.by_base(other, int(sweep.aggregates.read_layer.max()), "max_slope_step")
        assert (other_seeds == seeds).all()
    assert np.corrcoef(values, other_values)[0, 1] > 0.1  # a base's curves share a component
    differences = aggregate.differences(sweep)
    assert len(differences) and differences.paired.all()


def test_a_timed_command_reports_its_wall_time_and_peak_memory(tmp_path):
    build(tmp_path / "out", 14 * 10)
    got = timed(["compare", str(tmp_path / "out")])
    assert got["exit"] == 0 and got["wall_s"] > 0 and 30 < got["peak_rss_mb"] < 4000
    failed = timed(["compare", str(tmp_path / "nothing")])
    assert failed["exit"] == 2 and "no results" in failed["error"]
    report = {"built": {"rows": 140, "cells": 14, "shards": 14, "parquet_bytes": 1e6, "build_s": 1.0},
              **{name: got for name in ("compare_cold", "compare_rerun", "report_cold", "report_rerun")}}
    assert "compare cold" in format_analysis(report)
