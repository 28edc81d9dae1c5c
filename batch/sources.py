"""Input files: find them under each input path or URI, tell their format, count their rows and read
one row range of them. Parquet, JSON Lines and CSV, read with pyarrow.

A row is a Parquet row, a CSV record or a non-blank JSON Lines line, numbered from 0 in file order.
Files are opened through pyarrow filesystems; Parquet and CSV are parsed by pyarrow, JSON Lines by
the standard library line by line, so a broken line or a field of another type is one bad row, not
a failed file.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

from . import filesystems
from .errors import CorpusError

FORMATS = ("parquet", "jsonl", "csv")
SUFFIX_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
#: Compression suffixes pyarrow's input streams undo for JSON Lines and CSV (``data.jsonl.gz``).
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")


@dataclass(frozen=True)
class InputFile:
    """One input file: the input it was found under (``root``, as given), its path relative to that
    input ('' when the input is the file), the label its rows' default ids start with, its format and size."""

    root: str
    relpath: str
    label: str
    format: str
    size: int


@dataclass
class Records:
    """The requested columns of a row range, as Python values (``None`` where a row lacks a field), plus
    the rows that could not be parsed at all (index in the range -> reason)."""

    columns: dict[str, list]
    count: int
    broken: dict[int, str] = field(default_factory=dict)


def detect_format(name: str) -> str | None:
    """The format a file name implies (``.parquet``/``.pq``, ``.jsonl``/``.ndjson``, ``.csv``, each
    optionally compressed for JSON Lines and CSV), or None."""
    stem, ext = posixpath.splitext(name.lower())
    if ext in COMPRESSION_SUFFIXES:
        stem, ext = posixpath.splitext(stem)
        return {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(ext)
    return SUFFIX_FORMATS.get(ext)


def list_input_files(inputs: list[str], input_format: str | None = None) -> tuple[list[InputFile], int]:
    """Every input file under ``inputs`` (files or folders, searched recursively; names starting with
    '.' or '_' are skipped) in a stable order, and how many files were ignored for their extension."""
    import pyarrow.fs as pafs

    found: list[InputFile] = []
    ignored = 0
    for root in inputs:
        fs, path = filesystems.resolve(root)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise CorpusError(f"input {root!r} does not exist; pass a file or folder of Parquet, JSON Lines or CSV")
        if info.type == pafs.FileType.File:
            fmt = input_format or detect_format(info.base_name)
            if fmt is None:
                raise CorpusError(f"cannot tell the format of {root!r} from its name; name it .parquet, .jsonl or "
                                  ".csv, or pass --input-format parquet|jsonl|csv")
            found.append(InputFile(root, "", info.base_name, fmt, info.size))
            continue
        prefix = path.rstrip("/") + "/"
        entries = sorted((e for e in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                          if e.type == pafs.FileType.File), key=lambda e: e.path)
        for entry in entries:
            rel = entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.base_name
            if any(part.startswith((".", "_")) for part in rel.split("/")):
                continue  # hidden files and the _SUCCESS / _metadata files other writers leave
            fmt = input_format or detect_format(rel)
            if fmt is None:
                ignored += 1
                continue
            found.append(InputFile(root, rel, rel, fmt, entry.size))
    if not found:
        raise CorpusError(f"no Parquet, JSON Lines or CSV files under {', '.join(map(repr, inputs))} "
                          f"({ignored} other files ignored); pass --input-format to read other extensions")
    return found, ignored


def _path(source: InputFile) -> tuple[object, str]:
    fs, root = filesystems.resolve(source.root)
    return fs, filesystems.join(root, source.relpath)


def _jsonl_lines(fs, path: str) -> list[bytes]:
    """The non-blank lines of a (possibly compressed) JSON Lines file."""
    with fs.open_input_stream(path, compression="detect") as stream:
        data = stream.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte order mark is not part of the first record
    return [line for line in data.split(b"\n") if line.strip()]


def _read_csv(fs, path: str, columns: list[str] | None, string_columns: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Text and title stay strings even where every value looks like a number.
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns})
    if columns is not None:
        convert.include_columns = columns
    with fs.open_input_stream(path, compression="detect") as stream:
        return pacsv.read_csv(stream, convert_options=convert)


def check_columns(source: InputFile, required: list[str]) -> int:
    """The number of rows of ``source``; raises ``CorpusError`` when a required column is missing
    (Parquet and CSV: from the schema; JSON Lines: from the first record)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = _path(source)
    try:
        if source.format == "parquet":
            with fs.open_input_file(path) as fh:
                meta = pq.ParquetFile(fh).metadata
                names = meta.schema.to_arrow_schema().names
                rows = meta.num_rows
        elif source.format == "csv":
            table = _read_csv(fs, path, None, [])
            names, rows = table.column_names, table.num_rows
        else:
            lines = _jsonl_lines(fs, path)
            rows, names = len(lines), None
            if lines:
                try:
                    first = json.loads(lines[0])
                    names = list(first) if isinstance(first, dict) else None
                except ValueError:
                    names = None  # a broken first line is a bad row, not a reason to stop
            required = required[:1]  # ids and titles may be absent from a record (null)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"cannot read {source.format} input {_where(source)}: {exc}") from None
    missing = [c for c in required if names is not None and c not in names]
    if missing:
        raise CorpusError(f"{_where(source)} has no column {missing[0]!r} (it has: {', '.join(names) or 'none'}); "
                          "name the right one with --text-column / --id-column / --title-column")
    return rows


def read_range(source: InputFile, start: int, stop: int, columns: list[str], string_columns: list[str]) -> Records:
    """Rows ``start`` to ``stop`` (exclusive) of ``source``: the requested ``columns`` as Python values."""
    import pyarrow as pa

    fs, path = _path(source)
    size = fs.get_file_info(path).size
    if size != source.size:
        raise CorpusError(f"{_where(source)} has {size} bytes, but {source.size} when the job was planned: the input "
                          "changed; rerun the job (pass --force to recompute shards made from the old input)")
    try:
        if source.format == "parquet":
            table = _read_parquet_range(fs, path, start, stop, columns)
        elif source.format == "csv":
            table = _read_csv(fs, path, columns, string_columns).slice(start, stop - start)
        else:
            return _read_jsonl_range(fs, path, start, stop, columns)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"cannot read rows {start}-{stop} of {_where(source)}: {exc}") from None
    if table.num_rows != stop - start:
        raise CorpusError(f"{_where(source)} has {start + table.num_rows} rows where the plan counted at least {stop}: "
                          "the input changed while the job ran; rerun it")
    return Records({c: table.column(c).to_pylist() for c in columns}, table.num_rows)


def _read_parquet_range(fs, path: str, start: int, stop: int, columns: list[str]):
    """Only the row groups that hold rows ``start``..``stop``, then the exact slice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        groups, first_row, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < stop:
                groups.append(g)
                first_row = offset if first_row is None else first_row
            offset += n
        if not groups:
            return pa.table({c: pa.array([], pa.null()) for c in columns})
        table = pf.read_row_groups(groups, columns=columns)
    return table.slice(start - first_row, stop - start)


def _read_jsonl_range(fs, path: str, start: int, stop: int, columns: list[str]) -> Records:
    """Parsed line by line with the standard library: JSON types exactly as written (pyarrow would turn
    date-like strings into timestamps), and a broken line becomes one bad row."""
    lines = _jsonl_lines(fs, path)[start:stop]
    if len(lines) != stop - start:
        raise CorpusError(f"{path} has {start + len(lines)} records where the plan counted at least {stop}: "
                          "the input changed while the job ran; rerun it")
    out: dict[str, list] = {c: [] for c in columns}
    broken: dict[int, str] = {}
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as exc:
            broken[i] = f"record is not a JSON object ({str(exc)[:120]})"
            record = {}
        for c in columns:
            out[c].append(record.get(c))
    return Records(out, len(lines), broken)


def _where(source: InputFile) -> str:
    return repr(filesystems.join(source.root, source.relpath) if source.relpath else source.root)
