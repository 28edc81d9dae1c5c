"""Find a checkpoint (local folder or Hugging Face Hub id) and describe where it came from."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from runtime.artifact import sha256_file

DEFAULT_MODEL = "google/embeddinggemma-300m"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """The checkpoint could not be found, downloaded, or read."""


@dataclass
class Checkpoint:
    folder: Path
    model_id: str
    revision: str | None
    weights_sha256: dict[str, str] = field(default_factory=dict)


def resolve_checkpoint(model: str, revision: str | None = None) -> Checkpoint:
    """A local sentence-transformers folder as is, or a Hub id downloaded with huggingface_hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file():
            raise CheckpointError(f"{str(path)!r} has no modules.json: it is not a sentence-transformers checkpoint "
                                  "folder (expected the layout of google/embeddinggemma-300m)")
        folder, model_id = path.resolve(), _local_model_id(path)
    elif _HUB_ID.match(model) and not path.exists():
        folder, revision = _download(model, revision), revision
        model_id = model
        revision = _snapshot_revision(folder) or revision
    else:
        raise CheckpointError(f"{model!r} is neither an existing folder nor a Hugging Face id like {DEFAULT_MODEL!r}")
    weights = sorted(p for p in folder.rglob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"no *.safetensors weights under {folder}")
    return Checkpoint(folder=folder, model_id=model_id, revision=revision,
                      weights_sha256={str(p.relative_to(folder)): sha256_file(p) for p in weights})


def _local_model_id(path: Path) -> str:
    """Best effort name of a local folder's model, for the manifest (README front matter or folder name)."""
    return path.resolve().name


def _snapshot_revision(folder: Path) -> str | None:
    # huggingface_hub's cache layout is .../snapshots/<commit sha>/
    return folder.name if folder.parent.name == "snapshots" else None


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub is an export dependency
        raise CheckpointError("downloading from the Hub needs huggingface_hub (pip install huggingface_hub)") from exc
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except GatedRepoError as exc:
        raise CheckpointError(f"{repo_id} is gated: accept its licence on huggingface.co and log in "
                              "(`hf auth login` or HF_TOKEN), or pass a local folder with --model") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"{repo_id} was not found on the Hugging Face Hub (check the id, or log in "
                              "for private repos)") from exc
    except Exception as exc:  # network errors come in many types
        raise CheckpointError(f"could not download {repo_id} ({type(exc).__name__}: {exc}); without Hub access, "
                              "pass a local checkpoint folder with --model") from exc


def read_json(folder: Path, name: str, default=None):
    """A JSON file of the checkpoint, or ``default`` when it is absent."""
    path = folder / name
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))
