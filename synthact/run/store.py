"""Results on disk: a Parquet dataset partitioned by cell, a manifest of finished shards, resume.

The directory's layout is `synthact.layout`'s.

Every file is written to a hidden temporary name and then renamed, so readers (pyarrow,
pandas, polars, DuckDB skip names starting with '.') never see half a file, and a rerun
after a crash overwrites a shard file that lacks its manifest record with identical rows.
A rerun also verifies each record (file present, its size and sha256 as recorded, readable,
rows as recorded) and redoes the shards that fail, so whatever `verify` flags the rerun repairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from synthact.errors import SynthactError, first_line
from synthact.layout import MANIFEST, RESULTS, STATS, is_disk_full, join, resolve_location, shard_file
from synthact.manifest import ShardRecord, file_digest, read_manifest, record_path, result_files, shard_file_name
from synthact.run.provenance import input_fingerprints, package_versions
from synthact.spec import Job, Shard


class Store:
    """One sweep's output directory.

    Opening it checks any existing claim (job.json) without writing; the claim is written,
    create-exclusive, just before the first shard, so a spec that fails to load leaves the
    directory free, and it is checked again before every shard write.
    """

    def __init__(self, out: str | Path, job: Job, overrides: list[str] | tuple[str, ...] = ()):
        self.fs, self.root, self.uri = resolve_location(out)
        self.job = job
        self.overrides = list(overrides)  # the command line's KEY=VALUE words, recorded in job.json
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.inputs = input_fingerprints(job)
        if not self._check_claim():
            self._check_free()

    # ------------------------------------------------------------------ layout

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    @property
    def stats_root(self) -> str:
        """Where reference statistics live (a local path or a URI)."""
        return join(self.uri, STATS)

    def shard_file(self, shard: Shard) -> str:
        return shard_file(self.root, shard.cell.cell_id, shard.shard_id)

    # ------------------------------------------------------------------ claim / resume

    def _check_claim(self) -> bool:
        """True when job.json records this spec and inputs; error when it records another; False when absent."""
        theirs = read_claim(self.fs, self.root, self.uri)
        if theirs is None:
            return False
        spec_hash = theirs["spec_hash"]
        if _identity_hash(theirs.get("spec"), spec_hash) != self.job.spec_hash:
            raise SynthactError(
                f"output directory '{self.uri}' already holds results of another job spec "
                f"('{theirs.get('spec', {}).get('name', '?')}', spec hash {str(spec_hash)[:12]}); "
                "rerunning only resumes the same spec. Use a new --out directory, or delete that one."
            )
        changed = [p for p, h in theirs.get("inputs", {}).items() if self.inputs.get(p) != h]
        if changed:
            raise SynthactError(
                f"output directory '{self.uri}' holds results computed from other contents of {', '.join(changed)} "
                "(the file changed since); resuming would mix old and new rows. Use a new --out directory, "
                "or restore the file."
            )
        return True

    def _check_free(self) -> None:
        """A new claim needs a missing or empty directory (what a failed start leaves, stats and job.yaml, is fine)."""
        try:
            listing = self.fs.get_file_info(self.root)
            if listing.type == pafs.FileType.File:
                raise SynthactError(f"--out '{self.uri}' is a file; give a directory path")
            entries = []
            if listing.type == pafs.FileType.Directory:
                entries = [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.root))]
        except OSError as e:
            raise SynthactError(f"cannot use --out '{self.uri}': {e}") from None
        if [e for e in entries if e not in ("stats", "job.yaml") and not e.startswith(".tmp-")]:
            raise SynthactError(
                f"output directory '{self.uri}' is not empty and was not made by synthact (no job.json); "
                "use a new or empty --out directory"
            )

    def _claim(self) -> None:
        """Write job.json unless it exists (create-exclusive where the filesystem allows); recheck it."""
        if self._check_claim():
            return
        data = {"spec_hash": self.job.spec_hash, "spec": self.job.canonical(), "overrides": self.overrides,
                "inputs": self.inputs, "versions": package_versions()}
        try:
            self.fs.create_dir(self.root, recursive=True)
            self._write_atomic(self.path("job.yaml"), yaml.safe_dump(self.job.canonical(), sort_keys=False).encode())
            self._write_atomic(self.path("job.json"), json.dumps(data, indent=1).encode(), exclusive=True)
        except FileExistsError:
            pass  # another run claimed it first: the check below says whether it ran this spec
        except OSError as e:
            raise self._write_error(e, "claiming the directory (job.json)") from None
        self._check_claim()

    def verify(self, deep: bool = False) -> "Verification":
        """What the manifest claims, checked against the files (see `verify`)."""
        return verify(self.uri, deep)

    def done(self) -> set[str]:
        """Shard ids recorded as finished whose files are present, readable and hold the recorded rows."""
        return self.verify().good

    def forget(self, bad: list[tuple[str, str]]) -> None:
        """Remove the manifest records and files of shards that failed verification, so they are redone."""
        for shard_id, _ in bad:
            record = record_path(self.root, shard_id)
            try:
                shard_file = self.path(ShardRecord.from_json(self._read(record)).file)
            except (OSError, ValueError):
                shard_file = None
            _delete_quietly(self.fs, record)
            if shard_file:
                _delete_quietly(self.fs, shard_file)

    def discard_damaged_stats(self) -> list[tuple[str, str]]:
        """Remove reference statistics that do not load whole (what `verify --deep` flags); the workers
        recompute them when next needed. Returns (directory, problem) of each."""
        damaged = _damaged_stats(self.fs, self.path(STATS))
        if not damaged:
            return damaged
        from synthact.generation.stats import discard_stats

        for path, problem in damaged:
            print(f"synthact: reference statistics {path} are damaged ({problem}); they will be recomputed",
                  file=sys.stderr)
            discard_stats(self.fs, path)
        return damaged

    def clean_temporaries(self) -> int:
        """Remove hidden temporary files a killed run left behind; return how many."""
        removed = 0
        for base in (RESULTS, MANIFEST):
            selector = pafs.FileSelector(self.path(base), recursive=True, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and Path(info.path).name.startswith(".tmp-"):
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    # ------------------------------------------------------------------ writing

    def write_shard(self, shard: Shard, table: pa.Table) -> None:
        """Write a shard's rows, then its manifest record; each atomically."""
        meta = dict(table.schema.metadata or {})
        meta.update(
            {
                b"synthact.job": json.dumps(self.job.canonical()).encode(),
                b"synthact.spec_hash": self.job.spec_hash.encode(),
                b"synthact.versions": json.dumps(package_versions()).encode(),
            }
        )
        table = table.replace_schema_metadata(meta)
        self._claim()
        target = self.shard_file(shard)
        self.fs.create_dir(str(Path(target).parent), recursive=True)
        tmp = _tmp_beside(target)
        moved = False
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue()
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, target)
            moved = True
            record = ShardRecord(shard_id=shard.shard_id, cell_id=shard.cell.cell_id, rows=table.num_rows,
                                 file=shard_file_name(shard.cell.cell_id, shard.shard_id), finished=time.time(),
                                 size=data.size, sha256=hashlib.sha256(data).hexdigest())
            self.fs.create_dir(self.path(MANIFEST), recursive=True)
            self._write_atomic(record_path(self.root, shard.shard_id), record.to_json())
        except OSError as e:
            _delete_quietly(self.fs, tmp)
            if moved:  # no manifest record: take the file back so the dataset holds finished shards only
                _delete_quietly(self.fs, target)
            raise self._write_error(e, f"writing shard {shard.shard_id}") from None

    def _write_error(self, error: OSError, doing: str) -> SynthactError:
        if is_disk_full(error):
            return SynthactError(
                f"the disk under '{self.uri}' is full while {doing}. Results already written are intact "
                f"({len(self.done())} shards); free space and rerun the same command to resume."
            )
        return SynthactError(f"cannot write to '{self.uri}' while {doing}: {error}; use a writable --out directory")

    def read_table(self, cell_id: str | None = None) -> pa.Table:
        """All rows (or one cell's rows) written so far."""
        from synthact.results import read_table

        return read_table(self.uri, cell_id=cell_id)

    # ------------------------------------------------------------------ small files

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _write_atomic(self, path: str, data: bytes, exclusive: bool = False) -> None:
        """Write to a hidden name, then rename; `exclusive`: FileExistsError if `path` exists (hard link locally)."""
        tmp = _tmp_beside(path)
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            if exclusive and self.is_local:
                os.link(tmp, path)
                self.fs.delete_file(tmp)
            elif exclusive and self.fs.get_file_info(path).type == pafs.FileType.File:
                raise FileExistsError(path)
            else:
                self.fs.move(tmp, path)
        except OSError:
            _delete_quietly(self.fs, tmp)
            raise


def read_claim(fs: pafs.FileSystem, root: str, uri: str) -> dict | None:
    """An output directory's job.json (None when absent); a SynthactError when unreadable or damaged."""
    record = join(root, "job.json")
    try:
        if fs.get_file_info(record).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(record) as f:
            theirs = json.loads(f.read())
        if not isinstance(theirs, dict) or not isinstance(theirs["spec_hash"], str):
            raise ValueError("not a claim")
        return theirs
    except OSError as e:
        raise SynthactError(f"cannot read job.json in '{uri}' ({e}); check that the location is reachable and "
                            "readable") from None
    except (ValueError, KeyError, TypeError):
        raise SynthactError(
            f"'{uri}/job.json' is damaged (empty or not a synthact claim), so it is unknown which spec "
            "these results belong to; use a new --out directory, or delete the directory to start over"
        ) from None


def completion_note(out) -> str:
    """'' for a finished sweep; else one line saying how many of its shards are done (for compare and report)."""
    fs, root, uri = resolve_location(out)
    try:
        claim = read_claim(fs, root, uri)
        total = Job.model_validate(claim["spec"]).count()[1] if claim else None
    except (SynthactError, ValueError, TypeError):
        total = None
    if total is None:
        return ""
    done = len(read_manifest(fs, root).records)
    if done >= total:
        return ""
    return (f"NOTE: this sweep is incomplete: {done} of {total} shards done (a run still going, or one that stopped "
            "part-way; rerun the same `synthact run` to finish it). Everything below covers the finished shards only.")


def _identity_hash(spec, recorded: str) -> str:
    """The identity hash of a claimed spec, recomputed by this version (description, ray, wandb and output
    do not count; fields added since take their defaults); the recorded hash where the spec no longer parses."""
    try:
        return Job.model_validate(spec).spec_hash
    except (ValueError, TypeError):
        return str(recorded)


@dataclass
class Verification:
    """What an output directory holds: good shards, shards whose record lies (id, problem), stray files,
    (deep only) damaged reference statistics (directory, problem), which a rerun recomputes, and (recompute
    only) each cell's recomputation of its rows (`recompute.CellRecompute`)."""

    good: set[str] = field(default_factory=set)
    bad: list[tuple[str, str]] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    bad_stats: list[tuple[str, str]] = field(default_factory=list)
    recomputed: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad and not self.strays and not self.bad_stats and all(c.ok for c in self.recomputed)


def verify(out, deep: bool = False) -> Verification:
    """Check every manifest record: its file present, of the recorded size and sha256, readable Parquet,
    holding the recorded rows.

    Every file is read once for its checksum (records from before checksums: the footer only). The
    rows are counted from each file's footer, or (`deep`) by reading every row. Files under results/
    that no record names (other than hidden temporaries) are listed as strays.
    """
    fs, root, _ = resolve_location(out)
    manifest = read_manifest(fs, root)
    found = Verification(bad=[(shard_id, "its manifest record is damaged") for shard_id in manifest.damaged])
    for shard_id, record in manifest.records.items():
        problem = _file_problem(fs, join(root, record.file), record, deep)
        if problem:
            found.bad.append((shard_id, problem))
        else:
            found.good.add(shard_id)
    named = manifest.files(root)
    found.strays = [path for path in result_files(fs, join(root, RESULTS)) if path not in named]
    if deep:
        found.bad_stats = _damaged_stats(fs, join(root, STATS))
    return found


def _damaged_stats(fs: pafs.FileSystem, folder: str) -> list[tuple[str, str]]:
    """Statistics directories under `folder` that do not load whole (hidden temporaries skipped).

    Loading them needs torch, imported only when there are some: a first run's driver imports no torch."""
    found = [info.path for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
             if info.type == pafs.FileType.Directory and not info.base_name.startswith(".")]
    if not found:
        return []
    from synthact.generation.stats import load_stored_stats

    damaged = []
    for path in found:
        try:
            load_stored_stats(fs, path)
        except SynthactError as e:
            damaged.append((path, str(e)))
    return damaged


def _file_problem(fs: pafs.FileSystem, path: str, record: ShardRecord, deep: bool) -> str | None:
    expected = record.rows
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return f"{path} is missing"
    if record.size is not None and info.size != record.size:
        return f"{path} has {info.size} bytes, its manifest record says {record.size}"
    try:
        if record.sha256 is not None and file_digest(fs, path)[1] != record.sha256:
            return f"{path} does not match the checksum in its manifest record (its content changed or is damaged)"
    except OSError as e:
        return f"{path} cannot be read ({e})"
    try:
        with fs.open_input_file(path) as f:
            rows = pq.read_table(f).num_rows if deep else pq.ParquetFile(f).metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        return f"{path} is not readable Parquet ({first_line(str(e)) or type(e).__name__})"
    if rows != expected:
        return f"{path} holds {rows} rows, its manifest record says {expected}"
    return None


def _tmp_beside(path: str) -> str:
    parent, _, name = path.rpartition("/")
    return f"{parent}/.tmp-{uuid.uuid4().hex[:8]}-{name}"


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
