"""The output folder: one Parquet file per shard, the shards' bad rows, and the job's record.

    OUT/<shard>.parquet        id + embedding (fixed-size list of float32); metadata key "embeddinggemma"
    OUT/_errors/<shard>.jsonl  that shard's bad rows (only when it has some)
    OUT/errors.jsonl           every bad row of the job, in shard order (rewritten at the end of a run)
    OUT/_job.json              the job's settings, then its accounting when it finishes
    OUT/_tmp/                  files being written; each is moved into place only when complete

A shard counts as done when its Parquet file has a readable footer, its metadata matches the job's
settings and input range, and its row count matches what it recorded. Writes go to ``_tmp`` and are
then moved: a rename on a local disk, and an object that appears whole on object stores.
"""
from __future__ import annotations

import json
import uuid

import numpy as np

from . import filesystems
from .errors import OutputConflictError
from .plan import ShardSpec
from .settings import JobSettings
from .shard_embedding import EmbeddedShard

META_KEY = b"embeddinggemma"
SHARD_FORMAT = "embeddinggemma-corpus-shard"
JOB_FORMAT = "embeddinggemma-corpus-job"
FORMAT_VERSION = 1
JOB_FILE = "_job.json"
ERRORS_DIR = "_errors"
TMP_DIR = "_tmp"
ERRORS_FILE = "errors.jsonl"


def vectors_column(vectors: np.ndarray):
    """A float32 matrix as a pyarrow fixed-size list column (one list per row)."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])


def ids_column(ids: list):
    """The ids as pyarrow infers their type (strings when they mix types)."""
    import pyarrow as pa

    if not ids:
        return pa.array([], pa.string())
    try:
        return pa.array(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([str(i) for i in ids], pa.string())


def _differences(recorded: dict, expected: dict) -> list[str]:
    return [f"{k}: {recorded.get(k)!r} in the output, {expected.get(k)!r} now"
            for k in sorted(set(recorded) | set(expected)) if recorded.get(k) != expected.get(k)]


class OutputFolder:
    """The output folder of a job, at a local path or URI."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = filesystems.resolve(uri)

    def path(self, *names: str) -> str:
        """A path inside the folder."""
        return filesystems.join(self.root, "/".join(names))

    def shard_path(self, name: str) -> str:
        """Where a shard's vectors go."""
        return self.path(f"{name}.parquet")

    def errors_path(self, name: str) -> str:
        """Where a shard's bad rows go."""
        return self.path(ERRORS_DIR, f"{name}.jsonl")

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` under a temporary name in ``_tmp``, then move it to ``path``."""
        tmp = self.path(TMP_DIR, f"{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}")
        self.fs.create_dir(self.path(TMP_DIR), recursive=True)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    # ---- shards ---------------------------------------------------------------------------------

    def write_shard(self, spec: ShardSpec, result: EmbeddedShard, settings: JobSettings, written_by: dict) -> dict:
        """Write a shard's bad rows, then its vectors (the Parquet file last: its presence marks the
        shard done). Returns the metadata recorded in the file."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = {"format": SHARD_FORMAT, "format_version": FORMAT_VERSION,
                "variant": settings.artifact.variant, "manifest_sha256": settings.artifact.manifest_sha256,
                "settings": settings.fingerprint(), "shard": spec.to_dict(),
                "counts": {"rows_in": spec.rows, "rows_out": len(result.ids), "rows_failed": len(result.errors),
                           "rows_truncated": result.truncated},
                "written_by": written_by}
        if len(result.ids) + len(result.errors) != spec.rows:
            raise AssertionError(f"shard {spec.name}: {len(result.ids)} embedded + {len(result.errors)} failed "
                                 f"!= {spec.rows} rows read")  # a bug, never a data problem
        if result.errors:
            lines = "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in result.errors)
            self.write_atomic(self.errors_path(spec.name), lines.encode("utf-8"))
        table = pa.table({"id": ids_column(result.ids), "embedding": vectors_column(result.vectors)})
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode("utf-8")})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_atomic(self.shard_path(spec.name), sink.getvalue().to_pybytes())
        return meta

    def read_shard_metadata(self, name: str) -> dict | None:
        """The metadata of a finished shard; None when it is missing or unreadable (then it is redone)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.shard_path(name)
        if not self._exists(path):
            return None
        try:
            with self.fs.open_input_file(path) as fh:
                footer = pq.read_metadata(fh)
        except (OSError, pa.ArrowException):
            return None
        raw = (footer.metadata or {}).get(META_KEY)
        if raw is None:
            raise OutputConflictError(f"{path} is not an embed-corpus shard; choose another output folder, or "
                                      "pass --force to replace it")
        meta = json.loads(raw)
        if footer.num_rows != meta["counts"]["rows_out"]:
            return None
        if meta["counts"]["rows_failed"] and not self._exists(self.errors_path(name)):
            return None
        return meta

    def shard_done(self, spec: ShardSpec, settings: JobSettings) -> dict | None:
        """The metadata of ``spec``'s shard when it is finished with these settings; None when it must
        be (re)made; ``OutputConflictError`` when it was made with other settings or another input."""
        meta = self.read_shard_metadata(spec.name)
        if meta is None:
            return None
        diff = _differences(meta["settings"], settings.fingerprint()) + _differences(meta["shard"], spec.to_dict())
        if diff:
            raise OutputConflictError(
                f"shard {self.shard_path(spec.name)} was made with other settings or input ({'; '.join(diff)}); "
                "use another output folder, or pass --force to recompute everything")
        return meta

    def read_errors(self, name: str) -> bytes:
        """A shard's bad-row lines as written."""
        with self.fs.open_input_stream(self.errors_path(name)) as fh:
            return fh.read()

    # ---- the job ---------------------------------------------------------------------------------

    def read_job(self) -> dict | None:
        """The job record, or None in a new folder."""
        path = self.path(JOB_FILE)
        if not self._exists(path):
            return None
        with self.fs.open_input_stream(path) as fh:
            return json.loads(fh.read())

    def write_job(self, record: dict) -> None:
        """Replace the job record."""
        record = dict(record, format=JOB_FORMAT, format_version=FORMAT_VERSION)
        self.write_atomic(self.path(JOB_FILE), (json.dumps(record, indent=2, default=str) + "\n").encode("utf-8"))

    def claim(self, settings: JobSettings, force: bool) -> None:
        """Check the folder may take this job's output: new, empty, or holding this job's earlier run.
        With ``force``, the earlier output is removed first."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise OutputConflictError(f"output {self.uri!r} is a file; --output names a folder")
        if info.type == pafs.FileType.NotFound:
            self.fs.create_dir(self.root, recursive=True)
            return
        if force:
            self.remove_previous_output()
            return
        job = self.read_job()
        if job is None:
            entries = self.fs.get_file_info(pafs.FileSelector(self.root))
            if entries:
                raise OutputConflictError(f"output folder {self.uri!r} is not empty and holds no embed-corpus job; "
                                          "choose another folder, or pass --force to write into it")
            return
        diff = _differences(job.get("settings", {}), settings.fingerprint())
        if diff:
            raise OutputConflictError(f"output folder {self.uri!r} holds a job with other settings ({'; '.join(diff)}); "
                                      "choose another folder, or pass --force to recompute everything")

    def remove_previous_output(self) -> None:
        """Delete what an earlier job wrote here (its shards, bad rows, record and temporary files);
        files it did not write are left alone."""
        import pyarrow.fs as pafs

        for entry in self.fs.get_file_info(pafs.FileSelector(self.root)):
            name = entry.base_name
            if entry.type == pafs.FileType.Directory and name in (ERRORS_DIR, TMP_DIR):
                self.fs.delete_dir(entry.path)
            elif entry.type == pafs.FileType.File and (name in (JOB_FILE, ERRORS_FILE) or (
                    name.endswith(".parquet") and self._is_shard(entry.path))):
                self.fs.delete_file(entry.path)

    def _is_shard(self, path: str) -> bool:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with self.fs.open_input_file(path) as fh:
                return META_KEY in (pq.read_metadata(fh).metadata or {})
        except (OSError, pa.ArrowException):
            return True  # a broken file with a shard's name is an interrupted shard: ours

    def unplanned_shards(self, planned: set[str]) -> list[str]:
        """Shard files in the folder that the plan does not name (an input removed or renamed since):
        left there, a reader of the folder would count their rows as well."""
        import pyarrow.fs as pafs

        return sorted(e.base_name for e in self.fs.get_file_info(pafs.FileSelector(self.root))
                      if e.type == pafs.FileType.File and e.base_name.endswith(".parquet")
                      and e.base_name[:-len(".parquet")] not in planned and self._is_shard(e.path))

    def clean_tmp(self) -> None:
        """Drop files an interrupted run left half-written."""
        if self._exists(self.path(TMP_DIR)):
            self.fs.delete_dir(self.path(TMP_DIR))

    def write_errors_file(self, names_with_errors: list[str]) -> int:
        """Gather the shards' bad rows into ``errors.jsonl`` (shard order); returns the lines written."""
        chunks = [self.read_errors(n) for n in names_with_errors]
        data = b"".join(chunks)
        self.write_atomic(self.path(ERRORS_FILE), data)
        return data.count(b"\n")
