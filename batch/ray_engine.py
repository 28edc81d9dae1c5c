"""``--engine ray``: the shards as a Ray Dataset, embedded by a pool of actors (``map_batches`` with an
actor class), each holding one ``Embedder`` loaded once, with ``threads`` onnxruntime threads.

Each actor runs the same ``process_shard`` as the local engine on a whole shard: it reads the shard's
rows from the input path or URI, embeds them and writes the shard's file atomically, so the same
rows share the same batches on both engines and a shard is never half written. Ray Data spreads the
shards over the pool; when a worker dies, its actor is restarted and its shards run again (Ray
Data's actor pools retry without limit), while a Python error in a shard stops the job.

The artifact reaches the workers one of two ways (``artifact_transfer``): ``shared``, the same path
on every node (a shared or copied folder), or ``ship``, its files through Ray's object store into a
node-local cache. Either way each worker checks the manifest's sha256 against the job's before it
loads the model, and the ``Embedder`` checks every file's sha256 against the manifest.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.artifact import MANIFEST_NAME, read_manifest
from runtime.cli import install_hint

from .errors import CorpusError
from .output_folder import OutputFolder
from .plan import ShardSpec
from .settings import JobSettings
from .worker import check_artifact_identity, load_embedder, process_shard

RAY_HINT = install_hint("ray")
TRANSFERS = ("shared", "ship")
#: Seconds between progress polls of the actors' row counter.
PROGRESS_POLL = 0.5


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None          # a running cluster ("auto", "127.0.0.1:6379"); None starts a local one
    actors: int | None = None           # default: the cluster's CPUs // threads per actor
    artifact_transfer: str = "shared"   # "shared" path on every node, or "ship" it with the job


def import_ray():
    """The ``ray`` module with Ray Data, or a ``CorpusError`` that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise CorpusError(f"--engine ray needs Ray Data, which is not installed ({exc.name or exc}): {RAY_HINT}; "
                          "or use --engine local") from None
    return ray


class ProgressCounter:
    """Rows finished by all actors, read by the driver's progress bar."""

    def __init__(self):
        self.rows = 0

    def add(self, rows: int) -> None:
        """Count rows one actor finished."""
        self.rows += rows

    def total(self) -> int:
        """Rows finished so far."""
        return self.rows


def shipped_artifact_path(files: dict, manifest_sha256: str) -> Path:
    """A node-local copy of a shipped artifact (``files``: name -> object ref of its bytes), written once
    per node under the temp folder and named by its manifest sha256."""
    import ray

    target = Path(tempfile.gettempdir()) / "embeddinggemma-artifacts" / manifest_sha256
    if (target / MANIFEST_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest_sha256[:12]}.partial-", dir=target.parent))
    try:
        for name, ref in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(ray.get(ref))
        try:
            os.rename(staging, target)
        except OSError:
            pass  # another actor on this node finished the same copy first; keep that one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class ShardActor:
    """One Ray actor: loads the ``Embedder`` once, then embeds whole shards (one per batch row)."""

    def __init__(self, settings: dict, output_uri: str, artifact: dict, counter):
        self.settings = JobSettings.from_dict(settings)
        if artifact["transfer"] == "ship":
            path = shipped_artifact_path(artifact["files"], self.settings.artifact.manifest_sha256)
        else:
            path = artifact["path"]
        self.embedder = load_embedder(path, self.settings)
        self.output = OutputFolder(output_uri)
        self.counter = counter

    def __call__(self, batch: dict) -> dict:
        """Embed the shards named in ``batch["shard"]``; one outcome (JSON counts) per shard."""
        outcomes = []
        for item in batch["shard"]:
            spec = ShardSpec.from_dict(json.loads(item))
            counts = process_shard(spec, self.embedder, self.settings, self.output, self.counter.add.remote)
            outcomes.append(json.dumps(counts))
        return {"outcome": np.array(outcomes, dtype=object)}


def _artifact_for_workers(ray, transfer: str, artifact_path: str, settings: JobSettings, log) -> dict:
    if transfer not in TRANSFERS:
        raise CorpusError(f"unknown artifact transfer {transfer!r}; choose one of {', '.join(TRANSFERS)}")
    check_artifact_identity(artifact_path, settings.artifact)
    if transfer == "shared":
        path = str(Path(artifact_path).resolve())
        log(f"artifact: shared path {path} (each node reads it there; each worker checks its sha256)")
        return {"transfer": "shared", "path": path}
    names = [MANIFEST_NAME, *read_manifest(artifact_path)["files"]]
    size = sum((Path(artifact_path) / n).stat().st_size for n in names)
    log(f"artifact: shipped with the job ({size / 1e6:.0f} MB through Ray's object store into each node's "
        f"{tempfile.gettempdir()}/embeddinggemma-artifacts/; each worker checks its sha256)")
    return {"transfer": "ship", "files": {n: ray.put((Path(artifact_path) / n).read_bytes()) for n in names}}


def _root_cause(exc: BaseException) -> BaseException:
    """The first ``CorpusError`` or artifact error in a Ray exception's chain, else the exception."""
    from runtime import ArtifactError

    seen = exc
    while seen is not None:
        if isinstance(seen, (CorpusError, ArtifactError)):
            return seen
        cause = getattr(seen, "cause", None)
        seen = seen.__cause__ or (cause if isinstance(cause, BaseException) else None)
    return exc


def run_ray(pending: list[ShardSpec], settings: JobSettings, output: OutputFolder, artifact_path: str,
            on_rows: Callable[[int], None], log: Callable[[str], None], options: RayOptions) -> list[dict]:
    """Embed every pending shard on a Ray cluster; returns each shard's counts."""
    ray = import_ray()
    import runtime

    started_here = not ray.is_initialized()
    if started_here:
        # The driver's own code goes to the workers, so every node runs the same shard function.
        code = [str(Path(runtime.__file__).parent), str(Path(__file__).parent)]
        ray.init(address=options.address, runtime_env={"py_modules": code}, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own bar counts rows, Ray's would count shards
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = settings.threads or 1
        actors = options.actors or max(1, cpus // threads)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        log(f"engine ray: {actors} actors x {threads} onnxruntime threads on {nodes} node(s), {cpus} CPUs")
        artifact = _artifact_for_workers(ray, options.artifact_transfer, artifact_path, settings, log)
        counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        worker_settings = JobSettings.from_dict(dict(settings.to_dict(), threads=threads)).to_dict()

        items = [{"shard": json.dumps(spec.to_dict())} for spec in pending]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardActor, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads, fn_constructor_kwargs={"settings": worker_settings, "output_uri": output.uri,
                                                     "artifact": artifact, "counter": counter})
        return _collect(ray, dataset, counter, on_rows)
    finally:
        if started_here:
            ray.shutdown()


def _collect(ray, dataset, counter, on_rows) -> list[dict]:
    """Run the dataset, moving the progress bar from the actors' counter while shards finish."""
    stop = threading.Event()
    seen = [0]

    def poll() -> None:
        while not stop.wait(PROGRESS_POLL):
            total = ray.get(counter.total.remote())
            on_rows(total - seen[0])
            seen[0] = total

    poller = threading.Thread(target=poll, name="corpus-progress", daemon=True)
    poller.start()
    try:
        outcomes = [json.loads(row["outcome"]) for row in dataset.iter_rows()]
    except Exception as exc:  # Ray wraps worker errors in its own types; report the cause
        cause = _root_cause(exc)
        if cause is exc:
            raise CorpusError(f"the Ray job failed: {exc}") from exc
        raise cause from None
    finally:
        stop.set()
        poller.join()
    on_rows(ray.get(counter.total.remote()) - seen[0])
    return outcomes
