"""The claim and the manifest: which job an output directory holds, and which rows.

`job.json` (the claim) records the job's spec and its hash; `Store.write_shard` writes a shard's Parquet file,
then its record `manifest/<shard_id>.json`: file, row count, size and sha256. Every reader (resume, verify,
compare, report, W&B) takes exactly the files the records name and checks them (`manifest.check_shard`).
A record names only its own place: its file must be exactly `results/cell=<cell_id>/<shard_id>.parquet`
for its own ids, and its shard id must be its own file name; any other record is damaged (named, never
followed). A file under results/ that no record names is a stray: it is named, never read.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from synthact.errors import SynthactError, first_line
from synthact.integrity import identity, mismatch, read_with_digest
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


@dataclass(frozen=True)
class Checked:
    """A shard's file checked against its record and the directory's job: the sha256 of its bytes (None when they
    cannot be read), the problem (None when it is good), and, when its metadata names another job spec than the
    directory's job.json, that spec (canonical JSON; its hash where the file has no spec): the shard belongs to
    another sweep, or job.json was replaced."""

    sha256: str | None
    problem: str | None = None
    other_spec: str | None = None
    provenance: str | None = None  # the worker's provenance metadata (model, SAE, statistics paths), JSON


_checked: dict[tuple, Checked] = {}  # verdicts of this process, by the file's identity and what it was checked against


def check_shard(fs: pafs.FileSystem, root: str, record: ShardRecord, spec_hash: str | None,
                deep: bool = False) -> Checked:
    """Check a recorded shard: the file present, of the recorded size and sha256 (hashed from the very bytes that
    are then parsed), readable Parquet holding the recorded rows (`deep`: every row decoded), written for the
    directory's job (`spec_hash`, the one job.json records, in its metadata) and holding the recorded shard's rows
    only (its `shard_id` and `cell_id` columns). Remembered for the process while the file is unchanged."""
    path = join(root, record.file)
    try:
        key = (identity(fs, path), record, spec_hash, deep)
    except OSError as e:
        return Checked(None, f"{path} cannot be read ({first_line(str(e))})")
    if key[0] is not None and key in _checked:
        return _checked[key]
    found = _check(fs, path, record, spec_hash, deep)
    if key[0] is not None:
        _checked[key] = found
    return found


def _check(fs: pafs.FileSystem, path: str, record: ShardRecord, spec_hash: str | None, deep: bool) -> Checked:
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return Checked(None, f"{path} is missing")
        data, size, sha = read_with_digest(fs, path)
    except OSError as e:
        return Checked(None, f"{path} cannot be read ({first_line(str(e))})")
    problem = mismatch(path, size, sha, record.size, record.sha256)
    if problem:
        return Checked(sha, problem.replace("its record", "its manifest record"))
    try:
        file = pq.ParquetFile(pa.BufferReader(data))
        rows = file.read().num_rows if deep else file.metadata.num_rows
        meta = file.schema_arrow.metadata or {}
        names = [c for c in ("shard_id", "cell_id") if c in file.schema_arrow.names]
        ids = file.read(columns=names) if names else None
    except (pa.ArrowException, OSError) as e:
        return Checked(sha, f"{path} is not readable Parquet ({first_line(str(e)) or type(e).__name__})")
    if rows != record.rows:
        return Checked(sha, f"{path} holds {rows} rows, its manifest record says {record.rows}")
    theirs = meta.get(b"synthact.spec_hash", b"").decode(errors="replace")
    if spec_hash is not None and theirs != spec_hash:
        if not theirs:
            return Checked(sha, f"{path} has no synthact spec hash in its metadata (synthact did not write it)")
        return Checked(sha, f"{path} was written by another job spec (spec hash {theirs[:12]} in its metadata, "
                            f"{spec_hash[:12]} in job.json): a shard copied from another sweep, or job.json replaced",
                       other_spec=meta.get(b"synthact.job", theirs.encode()).decode(errors="replace"))
    for name in names:
        values = ids.column(name).unique().to_pylist()
        if values != [getattr(record, name)] and rows:
            return Checked(sha, f"{path} holds rows of {name} {', '.join(map(str, values[:3]))}, its manifest record "
                                f"says {getattr(record, name)}")
    provenance = meta.get(b"synthact.run.provenance")
    return Checked(sha, provenance=provenance.decode(errors="replace") if provenance else None)


def result_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Every visible file below `folder` (hidden names, such as a running shard's temporary, skipped)."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return sorted(i.path for i in fs.get_file_info(selector)
                  if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_")))
