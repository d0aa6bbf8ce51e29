"""`compare --ray ADDRESS` / `report --ray ADDRESS`: per-cell aggregation as Ray tasks over shared storage.

Each task reads one cell's shards and writes its parts to the cache beside the results
(cells.Cache); the driver then reads the cached parts, so its output rows are the same as without
Ray. The results must be where every node can read them (a shared filesystem or an object store URI),
and the cache where every node can write; a part a task could not cache is computed by the driver.
"""

from __future__ import annotations

from synthact.layout import resolve_location
from synthact.results import CellRows


def compute_parts(out, cells: list[CellRows], parts: list[str], seed: int, address: str) -> None:
    """Compute (and cache) `parts` of these cells on Ray, one task per cell."""
    if not cells:
        return
    import ray

    from synthact.run.ray_executor import check_address, connect

    check_address(address)
    uri = resolve_location(out)[2]
    started_here = connect(address)
    try:
        task = ray.remote(num_cpus=1)(_compute)
        ray.get([task.remote(uri, cell.cell_id, parts, seed) for cell in cells])
    finally:
        if started_here:
            ray.shutdown()


def _compute(uri: str, cell_id: str, parts: list[str], seed: int) -> None:
    from synthact.analysis.cells import cell_part
    from synthact.results import sweep_cells

    (cell,) = sweep_cells(uri, cell_id)
    for part in parts:
        cell_part(cell, part, seed, [])
