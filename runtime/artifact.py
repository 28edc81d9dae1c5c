"""The artifact contract: one self-contained folder per variant, described by ``embedder.json``.

Reading (used by the runtime) and writing (used by export and quant) live together so the two
sides cannot drift. Standard library only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .outputs import write_text_atomic

MANIFEST_NAME = "embedder.json"
FORMAT_NAME = "embeddinggemma-onnx-artifact"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
#: Key under the manifest's ``onnx``: onnxruntime session config entries the model needs to load as
#: built (for example constant ops that only fold with them); every session that opens it applies them.
SESSION_CONFIG = "session_config"


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


def session_config(manifest: dict) -> dict[str, str]:
    """The onnxruntime session config entries the artifact's model needs (``onnx.session_config``; often none)."""
    config = manifest.get("onnx", {}).get(SESSION_CONFIG, {})
    if not isinstance(config, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in config.items()):
        raise ArtifactError(f"the manifest's onnx.{SESSION_CONFIG} must map strings to strings, got {config!r}; "
                            "the artifact is corrupted, rebuild it")
    return config


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
    write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def update_manifest(folder: str | Path, **fields) -> None:
    """Add or replace top-level manifest fields without re-hashing (the manifest never hashes itself)."""
    path = Path(folder) / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(fields)
    write_text_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


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
