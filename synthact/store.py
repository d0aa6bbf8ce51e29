"""Results on disk: a Parquet dataset partitioned by cell, a manifest of finished shards, resume.

Layout of an output directory (local path or any pyarrow filesystem URI, e.g. s3://bucket/run):

    job.yaml                          the spec as given (validated), for humans
    job.json                          canonical spec + its hash: a rerun must match it
    results/cell=<cell_id>/<shard_id>.parquet   one row per curve
    manifest/<shard_id>.json          one record per finished shard (written after its Parquet file)
    stats/<key>/                      reference statistics, shared by all workers

Every file is written to a hidden temporary name and then renamed, so readers (pyarrow,
pandas, polars, DuckDB skip names starting with '.') never see half a file, and a rerun
after a crash overwrites a shard file that lacks its manifest record with identical rows.
"""

from __future__ import annotations

import errno
import json
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from synthact.errors import SynthactError
from synthact.provenance import package_versions
from synthact.spec import Job, Shard


class Store:
    """One sweep's output directory."""

    def __init__(self, out: str | Path, job: Job):
        self.fs, self.root, self.uri = resolve_location(out)
        self.job = job
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self._claim()

    # ------------------------------------------------------------------ layout

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def results_path(self) -> str:
        return self.path("results")

    @property
    def stats_root(self) -> str:
        """Where reference statistics live (a local path or a URI)."""
        return self.uri.rstrip("/") + "/stats"

    def shard_file(self, shard: Shard) -> str:
        return self.path("results", f"cell={shard.cell.cell_id}", f"{shard.shard_id}.parquet")

    # ------------------------------------------------------------------ claim / resume

    def _claim(self) -> None:
        """Record the spec in a new directory; refuse a used directory that holds another spec."""
        record = self.path("job.json")
        info = self.fs.get_file_info(record)
        if info.type == pafs.FileType.File:
            theirs = json.loads(self._read(record))
            if theirs.get("spec_hash") != self.job.spec_hash:
                raise SynthactError(
                    f"output directory '{self.uri}' already holds results of another job spec "
                    f"('{theirs.get('spec', {}).get('name', '?')}', spec hash {theirs.get('spec_hash', '?')[:12]}); "
                    "rerunning only resumes the same spec. Use a new --out directory, or delete that one."
                )
            return
        listing = self.fs.get_file_info(self.root)
        if listing.type == pafs.FileType.File:
            raise SynthactError(f"--out '{self.uri}' is a file; give a directory path")
        if listing.type == pafs.FileType.Directory and self.fs.get_file_info(pafs.FileSelector(self.root)):
            raise SynthactError(
                f"output directory '{self.uri}' is not empty and was not made by synthact (no job.json); "
                "use a new or empty --out directory"
            )
        self.fs.create_dir(self.root, recursive=True)
        self._write_atomic(self.path("job.yaml"), yaml.safe_dump(self.job.canonical(), sort_keys=False).encode())
        data = {"spec_hash": self.job.spec_hash, "spec": self.job.canonical(), "versions": package_versions()}
        self._write_atomic(record, json.dumps(data, indent=1).encode())

    def done(self) -> set[str]:
        """Shard ids recorded as finished in the manifest."""
        selector = pafs.FileSelector(self.path("manifest"), allow_not_found=True)
        return {
            Path(i.path).name.removesuffix(".json")
            for i in self.fs.get_file_info(selector)
            if i.path.endswith(".json") and not Path(i.path).name.startswith(".")
        }

    def clean_temporaries(self) -> int:
        """Remove hidden temporary files a killed run left behind; return how many."""
        removed = 0
        for base in ("results", "manifest"):
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
        target = self.shard_file(shard)
        self.fs.create_dir(str(Path(target).parent), recursive=True)
        tmp = _tmp_beside(target)
        moved = False
        try:
            with self.fs.open_output_stream(tmp) as f:
                pq.write_table(table, f, compression="zstd")
            self.fs.move(tmp, target)
            moved = True
            record = {
                "shard_id": shard.shard_id,
                "cell_id": shard.cell.cell_id,
                "rows": table.num_rows,
                "file": f"results/cell={shard.cell.cell_id}/{shard.shard_id}.parquet",
                "finished": time.time(),
            }
            self.fs.create_dir(self.path("manifest"), recursive=True)
            self._write_atomic(self.path("manifest", f"{shard.shard_id}.json"), json.dumps(record).encode())
        except OSError as e:
            _delete_quietly(self.fs, tmp)
            if moved:  # no manifest record: take the file back so the dataset holds finished shards only
                _delete_quietly(self.fs, target)
            if is_disk_full(e):
                raise SynthactError(
                    f"the disk under '{self.uri}' is full while writing shard {shard.shard_id}. "
                    f"Results already written are intact ({len(self.done())} shards); free space and "
                    "rerun the same command to resume."
                ) from None
            raise

    def read_table(self, cell_id: str | None = None) -> pa.Table:
        """All rows (or one cell's rows) written so far."""
        from synthact.results import read_table

        return read_table(self.uri, cell_id=cell_id)

    # ------------------------------------------------------------------ small files

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = _tmp_beside(path)
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)
        except OSError:
            _delete_quietly(self.fs, tmp)
            raise


def is_disk_full(error: OSError) -> bool:
    return error.errno == errno.ENOSPC or "No space left" in str(error)


def resolve_location(out) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path in it, URI) of an output location: a local path (`~` expanded) or a pyarrow URI."""
    text = str(out)
    uri = text if "://" in text else str(Path(text).expanduser().resolve())
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path, uri


def _tmp_beside(path: str) -> str:
    parent, _, name = path.rpartition("/")
    return f"{parent}/.tmp-{uuid.uuid4().hex[:8]}-{name}"


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
