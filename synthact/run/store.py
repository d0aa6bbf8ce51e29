"""Results on disk: a Parquet dataset partitioned by cell, a manifest of finished shards, resume.

The directory's layout is `synthact.layout`'s.

Every file is written to a hidden temporary name and then renamed, so readers (pyarrow,
pandas, polars, DuckDB skip names starting with '.') never see half a file, and a rerun
after a crash overwrites a shard file that lacks its manifest record with identical rows.
A rerun also verifies each record (file present, its size and sha256 as recorded, readable,
rows as recorded, written for this job, its own rows) and redoes the shards of the job's grid that
fail, deleting only their own files (`results/cell=<cell_id>/<shard_id>.parquet` and
`manifest/<shard_id>.json`, built from the job's ids, never from a record); a shard written by another
job spec is never deleted: the rerun refuses instead. A local output directory is held by one
`synthact run` at a time (`Store.locked`).
"""

from __future__ import annotations

import contextlib
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

from synthact.errors import SynthactError
from synthact.integrity import digest, record_problem
from synthact.layout import (MANIFEST, RESULTS, STATS, cache_dir, is_disk_full, join, resolve_location, shard_file,
                             unreachable)
from synthact.manifest import (ShardRecord, check_shard, read_claim, read_manifest, record_path, result_files,
                               shard_file_name)
from synthact.run.lock import LOCK, hold
from synthact.run.provenance import input_fingerprints, package_versions
from synthact.spec import Job, Shard
from synthact.spec.job import NOT_IDENTITY


class Store:
    """One sweep's output directory.

    Opening it checks any existing claim (job.json) without writing; the claim is written,
    create-exclusive, just before the first shard, so a spec that fails to load leaves the
    directory free, and it is checked again before every shard write.
    """

    def __init__(self, out: str | Path, job: Job):
        self.fs, self.root, self.uri = resolve_location(out)
        self.job = job
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.inputs = input_fingerprints(job)
        self.claimed_hash = job.spec_hash  # what job.json records once claimed: the hash every shard carries
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
            spec = theirs.get("spec") if isinstance(theirs.get("spec"), dict) else {}
            raise SynthactError(
                f"output directory '{self.uri}' already holds results of another job spec "
                f"('{spec.get('name', '?')}', spec hash {str(spec_hash)[:12]}): "
                f"{spec_differences(spec, self.job.canonical(), 'there', 'in this spec')}; "
                "rerunning only resumes the same spec. Use a new --out directory, or delete that one."
            )
        changed = [p for p, h in theirs.get("inputs", {}).items() if self.inputs.get(p) != h]
        if changed:
            raise SynthactError(
                f"output directory '{self.uri}' holds results computed from other contents of {', '.join(changed)} "
                "(the file changed since); resuming would mix old and new rows. Use a new --out directory, "
                "or restore the file."
            )
        self.claimed_hash = spec_hash
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
        if [e for e in entries if e not in ("stats", "job.yaml", LOCK) and not e.startswith(".tmp-")]:
            raise SynthactError(
                f"output directory '{self.uri}' is not empty and was not made by synthact (no job.json); "
                "use a new or empty --out directory"
            )

    def _claim(self) -> None:
        """Write job.json unless it exists (create-exclusive where the filesystem allows); recheck it."""
        if self._check_claim():
            return
        data = {"spec_hash": self.job.spec_hash, "spec": self.job.canonical(), "inputs": self.inputs,
                "versions": package_versions()}
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
        """Shard ids recorded as finished whose files pass every check (see `verify`)."""
        return self.verify().good

    def forget(self, shard_ids) -> None:
        """Remove the manifest records and files of these shards of the job (so they are redone): their own places,
        built from the job's ids, never a path a record names; ids outside the job's grid are left alone."""
        shards = {s.shard_id: s for s in self.job.shards()}
        for shard_id in shard_ids:
            if shard_id in shards:
                _delete_quietly(self.fs, record_path(self.root, shard_id))
                _delete_quietly(self.fs, self.shard_file(shards[shard_id]))

    @contextlib.contextmanager
    def locked(self):
        """Hold the output directory for one `synthact run` (a local directory; see `hold`)."""
        if not self.is_local:  # object stores have no lock (docs/results.md, "One run at a time")
            yield
            return
        with hold(Path(self.root), self.uri):
            yield

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
        """Write a shard's rows, then its manifest record; each atomically. The rows carry the spec, the spec hash
        job.json records (the directory's identity, which readers check) and the package versions."""
        self._claim()
        meta = dict(table.schema.metadata or {})
        meta.update(
            {
                b"synthact.job": json.dumps(self.job.canonical()).encode(),
                b"synthact.spec_hash": self.claimed_hash.encode(),
                b"synthact.versions": json.dumps(package_versions()).encode(),
            }
        )
        table = table.replace_schema_metadata(meta)
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
                                 size=data.size, sha256=digest(data)[1])
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


def completion_note(out) -> str:
    """'' for a finished sweep; else one line saying how many of its shards are done (for compare and report): the
    shards of the job's grid that pass their checks, so a damaged, foreign or duplicated record never counts."""
    fs, root, uri = resolve_location(out)
    try:
        claim = read_claim(fs, root, uri)
        total = Job.model_validate(claim["spec"]).count()[1] if claim else None
    except (SynthactError, ValueError, TypeError):
        total = None
    if total is None:
        return ""
    done = len(verify(out).good)
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


def spec_differences(theirs: dict, ours: dict, their_name: str, our_name: str, most: int = 4) -> str:
    """'they differ in seed (0 there, 7 in this spec)': the identity fields in which two canonical specs differ."""
    a, b = _flat(_identity(theirs)), _flat(_identity(ours))
    fields = sorted(k for k in a.keys() | b.keys() if a.get(k, "(absent)") != b.get(k, "(absent)"))
    if not fields:
        return "they differ in how this version of synthact reads them"
    shown = ", ".join(f"{k} ({json.dumps(a.get(k, '(absent)'))} {their_name}, {json.dumps(b.get(k, '(absent)'))} "
                      f"{our_name})" for k in fields[:most])
    return f"they differ in {shown}" + (f" and {len(fields) - most} more field(s)" if len(fields) > most else "")


def _identity(spec: dict) -> dict:
    try:
        return Job.model_validate(spec).identity()
    except (ValueError, TypeError):
        return {k: v for k, v in spec.items() if k not in NOT_IDENTITY}


def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


# ---------------------------------------------------------------------- verification


@dataclass
class Verification:
    """What an output directory holds: good shards, shards whose record or file fails a check (id, problem), stray
    files, (deep only) damaged reference statistics and toy caches (directory, problem), which a rerun recomputes
    and rebuilds, and (recompute only) each cell's recomputation of its rows (`recompute.CellRecompute`).

    Of the bad shards, `other_spec` (id -> the spec, canonical JSON or hash, in the shard's metadata) were written
    by another job spec than job.json's, and `outside` are records whose name is no shard of the job's grid: a
    rerun redoes neither (it refuses over the first, leaves the second), only `redo`."""

    good: set[str] = field(default_factory=set)
    bad: list[tuple[str, str]] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    bad_stats: list[tuple[str, str]] = field(default_factory=list)
    bad_caches: list[tuple[str, str]] = field(default_factory=list)
    recomputed: list = field(default_factory=list)
    other_spec: dict[str, str] = field(default_factory=dict)
    outside: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not (self.bad or self.strays or self.bad_stats or self.bad_caches) and all(c.ok for c in self.recomputed)

    @property
    def redo(self) -> list[tuple[str, str]]:
        """The bad shards of this job that a rerun deletes and computes again."""
        return [(s, p) for s, p in self.bad if s not in self.other_spec and s not in self.outside]


def verify(out, deep: bool = False) -> Verification:
    """Check every manifest record against the job's grid and its file (`manifest.check_shard`: present, of the
    recorded size and sha256, readable Parquet with the recorded rows, written for this job, its own rows).

    Every file is read once for its checksum (remembered while unchanged, `integrity`); `deep` also decodes
    every row, and checks the reference statistics under OUT/stats and the toy caches the shards were computed
    from against their records. Files under results/ that no record names (other than hidden temporaries) are
    listed as strays.
    """
    fs, root, uri = resolve_location(out)
    try:
        claim = read_claim(fs, root, uri)
        manifest = read_manifest(fs, root)
        files = result_files(fs, join(root, RESULTS))
    except OSError as e:
        raise unreachable(uri, e) from None
    spec_hash, grid = (claim["spec_hash"], _grid(claim)) if claim else (None, None)
    found = Verification()
    for shard_id, problem in manifest.damaged:
        found.bad.append((shard_id, problem))
        if grid is not None and shard_id not in grid:
            found.outside.add(shard_id)
    provenance = set()
    for shard_id, record in sorted(manifest.records.items()):
        if grid is not None and shard_id not in grid:
            found.bad.append((shard_id, f"{record_path(root, shard_id)} is not a shard of this job's grid (copied from "
                                        "another sweep?): never read; move it and its file out of the directory"))
            found.outside.add(shard_id)
            continue
        checked = check_shard(fs, root, record, spec_hash, deep)
        if checked.problem:
            found.bad.append((shard_id, checked.problem))
            if checked.other_spec:
                found.other_spec[shard_id] = checked.other_spec
        else:
            found.good.add(shard_id)
            provenance.add(checked.provenance)
    named = manifest.files(root)
    found.strays = [path for path in files if path not in named]
    if deep:
        found.bad_stats = _damaged_stats(fs, join(root, STATS))
        found.bad_caches = _damaged_caches(provenance)
    return found


def _grid(claim: dict) -> set[str] | None:
    """The shard ids of the claimed job's grid (None when its spec does not parse with this version)."""
    try:
        return {s.shard_id for s in Job.model_validate(claim.get("spec")).shards()}
    except (ValueError, TypeError):
        return None


def _damaged_stats(fs: pafs.FileSystem, folder: str) -> list[tuple[str, str]]:
    """Statistics directories under `folder` that fail their record or do not load whole (hidden temporaries
    skipped).

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


def _damaged_caches(provenance: set) -> list[tuple[str, str]]:
    """The toy model and SAE caches (under `layout.cache_dir()`) the shards were computed from, as their metadata
    names them, whose files are not the ones their record lists (a run rebuilds them); caches not on this
    machine are skipped."""
    paths = set()
    for text in provenance - {None}:
        try:
            entry = json.loads(text)
            paths |= {entry.get(k) for k in ("model_path", "sae_path")} - {None}
        except (ValueError, AttributeError):
            continue
    damaged = []
    for path in sorted(Path(p) for p in paths):
        if path.is_dir() and path.resolve().is_relative_to(cache_dir().resolve()):
            problem = record_problem(path)
            if problem:
                damaged.append((str(path), problem))
    return damaged


def _tmp_beside(path: str) -> str:
    parent, _, name = path.rpartition("/")
    return f"{parent}/.tmp-{uuid.uuid4().hex[:8]}-{name}"


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
