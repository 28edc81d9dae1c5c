"""Local paths and URIs as pyarrow filesystems: pyarrow's own (local, ``s3://``, ``gs://``, ``hdfs://``,
``abfs://``) first, then any scheme fsspec knows (``memory://``, ``http://``, ...) through pyarrow's
fsspec bridge, so the rest of the job reads and writes through one interface."""
from __future__ import annotations

import os

from runtime.cli import install_hint

from .errors import CorpusError


def has_scheme(uri: str) -> bool:
    """True for ``scheme://...`` (a URI), false for a local path."""
    return "://" in uri


def resolve(uri: str):
    """``(pyarrow.fs.FileSystem, path inside it)`` for a local path or a URI."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if not has_scheme(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    except pa.ArrowInvalid:
        pass  # a scheme pyarrow does not know: try fsspec's registry
    try:
        import fsspec
    except ImportError:
        raise CorpusError(f"pyarrow cannot open {uri!r} and fsspec is not installed; "
                          f"{install_hint('corpus')} (fsspec), and the scheme's package "
                          "(e.g. s3fs, gcsfs)") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise CorpusError(f"cannot open {uri!r}: {exc}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(root: str, name: str) -> str:
    """``root/name`` inside a filesystem (``/`` separated whatever the OS)."""
    return f"{root.rstrip('/')}/{name}" if name else root
