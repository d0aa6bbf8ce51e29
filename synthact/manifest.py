"""The claim and the manifest: which job an output directory holds, and which rows.

`job.json` (the claim) records the job's spec and its hash; `Store.write_shard` writes a shard's Parquet file,
then its record `manifest/<shard_id>.json`: file, row count, size and sha256. Every reader (resume, verify,
compare, report, W&B) takes exactly the files the records name and checks them (`results.check_shard`).
A record names only its own place: its file must be exactly `results/cell=<cell_id>/<shard_id>.parquet`
for its own ids, and its shard id must be its own file name; any other record is damaged (named, never
followed). A file under results/ that no record names is a stray: it is named, never read.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from synthact.errors import SynthactError
from synthact.layout import JOB_JSON, MANIFEST, RESULTS, join

CELL_ID = re.compile(r"[0-9a-f]+")
SHARD_ID = re.compile(r"([0-9a-f]+)-[0-9]+")
SHA256 = re.compile(r"[0-9a-f]{64}")


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
        """ValueError naming the damage when the record is not one (not JSON, a field missing or of the wrong
        type, ids that are not synthact's, or a file other than its own shard's)."""
        try:
            raw = json.loads(data)
            record = cls(shard_id=_text(raw["shard_id"]), cell_id=_text(raw["cell_id"]), rows=_count(raw["rows"]),
                         file=_text(raw["file"]), finished=float(raw["finished"]),
                         size=None if raw.get("size") is None else _count(raw["size"]),
                         sha256=None if raw.get("sha256") is None else _text(raw["sha256"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"damaged manifest record ({type(e).__name__}: {e})") from None
        ids = SHARD_ID.fullmatch(record.shard_id)
        if not (ids and CELL_ID.fullmatch(record.cell_id) and ids.group(1) == record.cell_id):
            raise ValueError(f"damaged manifest record (shard id '{record.shard_id}' and cell id '{record.cell_id}' "
                             "are not a synthact shard of that cell)")
        own = shard_file_name(record.cell_id, record.shard_id)
        if record.file != own:
            raise ValueError(f"damaged manifest record (it names the file '{record.file}', but a record names only its "
                             f"own shard's file, {own}; not followed)")
        if record.sha256 is not None and not SHA256.fullmatch(record.sha256):
            raise ValueError("damaged manifest record (its sha256 is not 64 hex digits)")
        return record


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{value!r} is not a count")
    return value


def shard_file_name(cell_id: str, shard_id: str) -> str:
    """A shard's file relative to the output directory (what its record stores)."""
    return f"{RESULTS}/cell={cell_id}/{shard_id}.parquet"


def record_path(root: str, shard_id: str) -> str:
    return join(root, MANIFEST, f"{shard_id}.json")


@dataclass
class Manifest:
    """Every record of an output directory (`records` by shard id) and the damaged ones (shard id, problem), the
    shard id being the record's file name."""

    records: dict[str, ShardRecord]
    damaged: list[tuple[str, str]]

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
    """Read every record under ROOT/manifest (hidden temporaries skipped). OSError when it cannot be listed."""
    found = Manifest({}, [])
    selector = pafs.FileSelector(join(root, MANIFEST), allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or info.base_name.startswith("."):
            continue
        shard_id = info.base_name.removesuffix(".json")
        try:
            record = read_record(fs, info.path)
        except OSError as e:
            found.damaged.append((shard_id, f"its manifest record cannot be read ({e})"))
            continue
        except ValueError as e:
            found.damaged.append((shard_id, str(e)))
            continue
        if record.shard_id != shard_id:
            found.damaged.append((shard_id, f"damaged manifest record (it names shard {record.shard_id}, not its "
                                            "own file name; not followed)"))
            continue
        found.records[shard_id] = record
    return found


def read_record(fs: pafs.FileSystem, path: str) -> ShardRecord:
    """One record file; ValueError when damaged, OSError when unreadable."""
    with fs.open_input_stream(path) as f:
        return ShardRecord.from_json(f.read())


def read_claim(fs: pafs.FileSystem, root: str, uri: str) -> dict | None:
    """An output directory's job.json (None when absent); a SynthactError when unreadable or damaged."""
    claim = join(root, JOB_JSON)
    try:
        if fs.get_file_info(claim).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(claim) as f:
            theirs = json.loads(f.read())
        if not isinstance(theirs, dict) or not isinstance(theirs["spec_hash"], str):
            raise ValueError("not a claim")
        return theirs
    except OSError as e:
        raise SynthactError(f"cannot read job.json in '{uri}' ({e}); check that the location is reachable and "
                            "readable") from None
    except (ValueError, KeyError, TypeError):
        raise SynthactError(
            f"'{join(uri, JOB_JSON)}' is damaged (empty or not a synthact claim), so it is unknown which spec "
            "these results belong to; use a new --out directory, or delete the directory to start over"
        ) from None


def result_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Every visible file below `folder` (hidden names, such as a running shard's temporary, skipped)."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return sorted(i.path for i in fs.get_file_info(selector)
                  if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_")))
