"""One shard from input to output: the step both engines run, so they cannot differ."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from runtime.artifact import MANIFEST_NAME, sha256_file

from .errors import CorpusError
from .output_folder import OutputFolder
from .plan import ShardSpec
from .settings import ArtifactIdentity, JobSettings
from .shard_embedding import embed_shard
from .sources import read_range


def columns_to_read(settings: JobSettings) -> tuple[list[str], list[str]]:
    """The input columns a shard needs, and those that must stay strings (text, title)."""
    strings = [c for c in (settings.text_column, settings.title_column) if c]
    return [c for c in dict.fromkeys([*strings, settings.id_column]) if c], strings


def check_artifact_identity(path: str | Path, expected: ArtifactIdentity) -> None:
    """Raise ``CorpusError`` unless the manifest at ``path`` is the one the job was planned with."""
    found = sha256_file(Path(path) / MANIFEST_NAME)
    if found != expected.manifest_sha256:
        raise CorpusError(f"the artifact at {str(path)!r} has manifest sha256 {found[:12]}..., but the job was "
                          f"started with {expected.manifest_sha256[:12]}... ({expected.variant}): every worker must "
                          "see the same artifact; copy the same folder to each node, or ship it with the job")


def load_embedder(path: str | Path, settings: JobSettings):
    """The ``Embedder`` a worker uses, after checking it is the job's artifact."""
    from runtime import Embedder

    check_artifact_identity(path, settings.artifact)
    return Embedder(path, threads=settings.threads, verify=settings.verify)


def written_by(embedder) -> dict:
    """Who wrote a shard: package, onnxruntime and tokenizer versions (for the reader's record)."""
    import onnxruntime

    import runtime

    return {"project": "embeddinggemma-onnx", "version": runtime.__version__, "onnxruntime": onnxruntime.__version__,
            "tokenizer": embedder.tokenizer_backend}


def process_shard(spec: ShardSpec, embedder, settings: JobSettings, output: OutputFolder,
                  on_rows: Callable[[int], None] | None = None) -> dict:
    """Read, embed and write one shard; returns the counts recorded in its metadata."""
    columns, strings = columns_to_read(settings)
    records = read_range(spec.source, spec.start, spec.stop, columns, strings)
    result = embed_shard(embedder, spec, records, settings, on_rows)
    meta = output.write_shard(spec, result, settings, written_by(embedder))
    return dict(meta["counts"], name=spec.name)
