"""The artifact contract: one self-contained folder per variant, described by ``embedder.json``.

Reading (used by the runtime) and writing (used by export and quant) live together so the two
sides cannot drift. Standard library only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

MANIFEST_NAME = "embedder.json"
FORMAT_NAME = "embeddinggemma-onnx-artifact"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


class ArtifactError(RuntimeError):
    """An artifact folder is missing, corrupted, or of a format this version cannot read."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks so gigabyte weights do not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: str | Path, names: list[str]) -> dict[str, dict]:
    """Manifest ``files`` section: sha256 and size of each named file in ``folder``."""
    folder = Path(folder)
    return {name: {"sha256": sha256_file(folder / name), "size": (folder / name).stat().st_size} for name in names}


def read_manifest(folder: str | Path) -> dict:
    """Load and check the manifest of an artifact folder (format name and version, required keys)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {str(folder)!r} does not exist or is not a folder; "
                            "pass the folder written by `embeddinggemma-export` or `embeddinggemma-quant`")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{str(folder)!r} has no {MANIFEST_NAME}; it is not an artifact folder "
                            "(build one with `embeddinggemma-export --model ... --out DIR`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); the artifact is corrupted, re-export it") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{path} is not an {FORMAT_NAME} manifest (format={manifest.get('format')!r})"
                            if isinstance(manifest, dict) else f"{path} is not a JSON object")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ArtifactError(
            f"{path} has format_version {version!r}, but this runtime reads only {list(SUPPORTED_FORMAT_VERSIONS)}; "
            "upgrade the package, or re-export the artifact with this version"
        )
    missing = [k for k in ("files", "model_file", "embedding", "prompts", "max_seq_length", "onnx") if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks required keys {missing}; the artifact is incomplete, re-export it")
    return manifest


def verify_files(folder: str | Path, manifest: dict, check_hashes: bool = True) -> None:
    """Check every file listed in the manifest exists with the recorded size (and sha256)."""
    folder = Path(folder)
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"artifact file {name!r} is missing from {folder}; copy the whole folder, not single files")
        size = path.stat().st_size
        if size != entry["size"]:
            raise ArtifactError(f"artifact file {name!r} in {folder} has {size} bytes but the manifest says "
                                f"{entry['size']}: truncated or replaced; re-copy or re-export the artifact")
        if check_hashes and sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"artifact file {name!r} in {folder} fails its sha256 check: corrupted or replaced; "
                                "re-copy or re-export the artifact (or pass verify=False to skip the check at your risk)")


def write_manifest(folder: str | Path, manifest: dict) -> None:
    """Write the manifest, recording sha256 and size of every file in ``folder`` except itself."""
    folder = Path(folder)
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    manifest = dict(manifest, format=FORMAT_NAME, format_version=FORMAT_VERSION, files=file_entries(folder, names))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class OutputExistsError(FileExistsError):
    """The output folder exists and overwriting was not asked for."""


@contextlib.contextmanager
def staged_output(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``out``; on success move it into place atomically.

    On any error the staging folder is removed and ``out`` is untouched. An existing ``out`` is
    replaced only when ``force`` is set, and only after the new folder is complete.
    """
    out = Path(out).resolve()
    if out.exists() and not force:
        raise OutputExistsError(f"output {str(out)!r} already exists; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        # mkdtemp makes a private 0700 folder; give the artifact the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
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


def update_manifest(folder: str | Path, **fields) -> None:
    """Add or replace top-level manifest fields without re-hashing (the manifest never hashes itself)."""
    path = Path(folder) / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(fields)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def accuracy_levels(quantization: dict | None) -> str:
    """MatMulNBits accuracy level(s) from a manifest's ``quantization`` block: "4", "Q8_0: 4, Q4_0: 0", or "–"."""
    by_format: dict[str, set] = {}
    for g in ((quantization or {}).get("groups") or {}).values():
        if isinstance(g, dict) and g.get("op") == "MatMulNBits" and "accuracy_level" in g:
            by_format.setdefault(g.get("format", "?"), set()).add(g["accuracy_level"])
    if not by_format:
        return "–"
    levels = {lv for v in by_format.values() for lv in v}
    if len(levels) == 1:
        return str(next(iter(levels)))
    return ", ".join(f"{f}: {'/'.join(map(str, sorted(v)))}" for f, v in sorted(by_format.items(), reverse=True))
