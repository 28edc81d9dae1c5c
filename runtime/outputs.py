"""Writing outputs so that nothing is lost: an existing output is replaced only when asked for
(``--force``) and only once the new one is complete, and every file or folder appears in one step, so
a crash leaves the old output or none, never half of one. Standard library only.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class OutputExistsError(FileExistsError):
    """The output exists and overwriting was not asked for."""


def refuse_existing(out: str | Path, force: bool, *, option: str = "--out", empty_ok: bool = False) -> None:
    """Raise :class:`OutputExistsError`, naming the fix, when ``out`` exists and ``force`` is not set
    (with ``empty_ok`` an empty folder counts as free). Call it before any slow work."""
    out = Path(out)
    if force or not out.exists() or (empty_ok and out.is_dir() and not any(out.iterdir())):
        return
    raise OutputExistsError(f"output {str(out)!r} already exists; choose another {option} or pass --force to "
                            "replace it")


def add_json_option(parser, help: str, **kwargs) -> None:
    """Add ``--json FILE`` (a JSON side output described by ``help``) and ``--force`` (replace it) to an
    argparse parser; :func:`claim_json_option` then checks them."""
    parser.add_argument("--json", metavar="FILE", help=help, **kwargs)
    parser.add_argument("--force", action="store_true", help="replace --json if it exists")


def claim_json_option(parser, args) -> None:
    """Stop with ``parser.error`` (exit 2) when ``--json`` names an existing file and ``--force`` was not
    given. Call it before the slow work, so a finished measurement is never lost to a name clash."""
    if args.json:
        try:
            refuse_existing(args.json, args.force, option="--json")
        except OutputExistsError as exc:
            parser.error(str(exc))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def staged_output(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``out``; on success move it into place atomically.

    On any error the staging folder is removed and ``out`` is untouched. An existing ``out`` is
    replaced only when ``force`` is set, and only after the new folder is complete.
    """
    out = Path(out).resolve()
    refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        # mkdtemp makes a private 0700 folder; give the output the usual umask-based mode.
        os.chmod(staging, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that go by it still do); on
    success it replaces ``path`` in one step, on any error it is removed and ``path`` is untouched."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
