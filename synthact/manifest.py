"""The manifest: one JSON record per finished shard. It, not the folder, defines which rows a sweep holds.

`Store.write_shard` writes a shard's Parquet file, then its record; every reader (resume, verify,
compare, report, W&B) takes exactly the files the records name, with the row counts they record.
A file under results/ that no record names is a stray: it is named, never read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from synthact.layout import MANIFEST, RESULTS, join


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard: its id, cell, row count, file (relative to the output directory) and the file's
    size and sha256 (None in records written before synthact recorded them: those are checked by rows only)."""

    shard_id: str
    cell_id: str
    rows: int
    file: str
    finished: float
    size: int | None = None
    sha256: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ShardRecord:
        """ValueError when the record is damaged (not JSON, a field missing or of the wrong type)."""
        try:
            raw = json.loads(data)
            record = cls(shard_id=str(raw["shard_id"]), cell_id=str(raw["cell_id"]), rows=int(raw["rows"]),
                         file=str(raw["file"]), finished=float(raw["finished"]),
                         size=None if raw.get("size") is None else int(raw["size"]),
                         sha256=None if raw.get("sha256") is None else str(raw["sha256"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"damaged manifest record: {e}") from None
        if record.rows < 0 or not record.file.startswith(f"{RESULTS}/"):
            raise ValueError("damaged manifest record: negative rows or a file outside results/")
        return record


def file_digest(fs: pafs.FileSystem, path: str, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, streamed."""
    h, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while data := f.read(chunk):
            h.update(data)
            size += len(data)
    return size, h.hexdigest()


def shard_file_name(cell_id: str, shard_id: str) -> str:
    """A shard's file relative to the output directory (what its record stores)."""
    return f"{RESULTS}/cell={cell_id}/{shard_id}.parquet"


def record_path(root: str, shard_id: str) -> str:
    return join(root, MANIFEST, f"{shard_id}.json")


@dataclass
class Manifest:
    """Every record of an output directory (`records` by shard id) and the shard ids whose record is damaged."""

    records: dict[str, ShardRecord]
    damaged: list[str]

    def by_cell(self) -> dict[str, list[ShardRecord]]:
        """Records grouped by cell, each cell's shards in id order."""
        cells: dict[str, list[ShardRecord]] = {}
        for shard_id in sorted(self.records):
            record = self.records[shard_id]
            cells.setdefault(record.cell_id, []).append(record)
        return cells

    def files(self, root: str) -> set[str]:
        return {join(root, r.file) for r in self.records.values()}


def read_manifest(fs: pafs.FileSystem, root: str) -> Manifest:
    """Read every record under ROOT/manifest (hidden temporaries skipped)."""
    found = Manifest({}, [])
    selector = pafs.FileSelector(join(root, MANIFEST), allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or info.base_name.startswith("."):
            continue
        shard_id = info.base_name.removesuffix(".json")
        try:
            with fs.open_input_stream(info.path) as f:
                record = ShardRecord.from_json(f.read())
        except (OSError, ValueError):
            found.damaged.append(shard_id)
            continue
        if record.shard_id != shard_id:
            found.damaged.append(shard_id)
            continue
        found.records[shard_id] = record
    return found


def result_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Every visible file below `folder` (hidden names, such as a running shard's temporary, skipped)."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return sorted(i.path for i in fs.get_file_info(selector)
                  if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_")))
