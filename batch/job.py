"""``embed_corpus``: plan the shards, skip the finished ones, run an engine on the rest, then account
for every input row (embedded + bad = read) and record the result in the output folder."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from runtime.artifact import MANIFEST_NAME, ArtifactError, read_manifest, sha256_file
from runtime.progress import progress_bar
from runtime.prompts import PromptError, with_prompts

from .errors import CorpusError, OutputConflictError
from .output_folder import ERRORS_FILE, OutputFolder
from .plan import ShardSpec, plan_shards
from .ray_engine import RayOptions, import_ray, run_ray
from .settings import DEFAULT_ROWS_PER_SHARD, ArtifactIdentity, JobSettings
from .sources import FORMATS, list_input_files
from .worker import columns_to_read

ENGINES = ("local", "ray")


@dataclass
class CorpusReport:
    """What a run did and the accounting of the whole output (all shards, this run's and earlier ones)."""

    output: str
    engine: str
    variant: str
    manifest_sha256: str
    input_files: int
    shards: int
    shards_skipped: int        # finished by an earlier run and reused
    shards_written: int        # made by this run
    rows_in: int               # rows in the input files
    rows_out: int              # rows with a vector in the output
    rows_failed: int           # rows in errors.jsonl
    rows_truncated: int        # embedded after cutting to the model's maximum length
    rows_this_run: int         # rows read by this run (the skipped shards' rows not counted)
    seconds: float             # this run's engine time

    @property
    def balanced(self) -> bool:
        """True when every input row is either embedded or in the errors file, exactly once."""
        return self.rows_in == self.rows_out + self.rows_failed

    def summary(self) -> str:
        """One paragraph for the terminal."""
        rate = f", {self.rows_this_run / self.seconds:.1f} rows/s" if self.seconds > 0 and self.rows_this_run else ""
        check = "ok" if self.balanced else "MISMATCH"
        return (f"{self.shards_written} shard(s) written, {self.shards_skipped} already done (of {self.shards}); "
                f"this run: {self.rows_this_run} rows in {self.seconds:.1f} s{rate}\n"
                f"rows in {self.rows_in} = embedded {self.rows_out} + bad {self.rows_failed}: {check}"
                + (f"; {self.rows_truncated} truncated" if self.rows_truncated else "")
                + (f"\nbad rows: {self.output.rstrip('/')}/{ERRORS_FILE}" if self.rows_failed else ""))


def resolve_artifact(model: str | Path, variant: str | None = None) -> tuple[Path, dict]:
    """The artifact folder and its manifest: ``model`` itself, or ``model/variant`` when ``model``
    holds several variants; with ``variant``, the manifest's variant must match."""
    folder = Path(model)
    if variant is not None and not (folder / MANIFEST_NAME).is_file() and (folder / variant).is_dir():
        folder = folder / variant
    try:
        manifest = read_manifest(folder)
    except ArtifactError as exc:
        raise CorpusError(str(exc)) from None
    if variant is not None and manifest.get("variant") != variant:
        raise CorpusError(f"{str(folder)!r} holds variant {manifest.get('variant')!r}, not {variant!r}; "
                          f"pass the {variant} folder, or its parent with --variant {variant}")
    return folder, manifest


def job_settings(folder: Path, manifest: dict, *, dim: int | None, prompt_name: str | None, title_column: str | None,
                 **options) -> JobSettings:
    """Settings checked against the artifact: a dim it has, a prompt it knows (and titles only with a
    prompt that has a title slot), all before any model is loaded."""
    dims = [int(d) for d in manifest["embedding"]["matryoshka_dims"]]
    dim = int(manifest["embedding"]["dim"]) if dim is None else dim
    if dim not in dims:
        raise CorpusError(f"--dim {dim} is not a size of this model; choose one of {', '.join(map(str, dims))}")
    try:
        with_prompts(["x"], manifest["prompts"], prompt_name=prompt_name, titles=[None] if title_column else None,
                     default_prompt_name=manifest.get("default_prompt_name"))
    except PromptError as exc:
        raise CorpusError(f"--prompt-name: {exc}" if exc.field == "prompt_name" else
                          f"--title-column needs a prompt with a title slot: {exc}") from None
    identity = ArtifactIdentity(str(folder), manifest.get("variant", "unknown"), sha256_file(folder / MANIFEST_NAME))
    return JobSettings(artifact=identity, dim=dim, prompt_name=prompt_name, title_column=title_column, **options)


def embed_corpus(inputs: str | list[str], output: str, model: str | Path, *, text_column: str = "text",
                 id_column: str | None = None, title_column: str | None = None, prompt_name: str | None = None,
                 dim: int | None = None, normalize: bool = True, truncate: bool = True, variant: str | None = None,
                 input_format: str | None = None, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, batch_size: int = 32,
                 threads: int | None = None, verify: bool = True, engine: str = "local",
                 ray: RayOptions | None = None, force: bool = False, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> CorpusReport:
    """Embed every row of a corpus (Parquet, JSON Lines or CSV files under ``inputs``, local paths or
    URIs) into Parquet shards under ``output``; resumes an interrupted run of the same job.

    Each shard file holds ``id`` and ``embedding`` (fixed-size list of float32) and records the
    artifact's variant, manifest sha256 and the settings in its metadata; bad rows (null, empty or
    non-string text, too long with ``truncate=False``) go to ``output/errors.jsonl``. Raises
    ``CorpusError`` for bad settings or inputs, ``OutputConflictError`` when ``output`` holds another
    job's results and ``force`` is not set, and when the final accounting does not balance.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    if engine not in ENGINES:
        raise CorpusError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if input_format is not None and input_format not in FORMATS:
        raise CorpusError(f"unknown input format {input_format!r}; choose one of {', '.join(FORMATS)}")
    if rows_per_shard < 1 or batch_size < 1:
        raise CorpusError(f"rows_per_shard and batch_size must be positive, got {rows_per_shard} and {batch_size}")
    if engine == "ray":
        import_ray()  # a missing Ray is reported before anything is read or written
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    folder, manifest = resolve_artifact(model, variant)
    settings = job_settings(folder, manifest, dim=dim, prompt_name=prompt_name, title_column=title_column,
                            text_column=text_column, id_column=id_column, normalize=normalize, truncate=truncate,
                            batch_size=batch_size, rows_per_shard=rows_per_shard, threads=threads, verify=verify,
                            input_format=input_format)

    files, ignored = list_input_files(inputs, input_format)
    shards = plan_shards(files, rows_per_shard, columns_to_read(settings)[0])
    log(f"{len(files)} input file(s), {sum(s.rows for s in shards)} rows, {len(shards)} shard(s) of up to "
        f"{rows_per_shard} rows" + (f"; {ignored} file(s) with other extensions ignored" if ignored else ""))

    out = OutputFolder(output)
    out.claim(settings, force)
    out.clean_tmp()
    extra = out.unplanned_shards({s.name for s in shards})
    if extra:
        raise OutputConflictError(f"output folder {output!r} holds {len(extra)} shard(s) this job does not plan "
                                  f"(first: {extra[0]}; an input removed or renamed since?); choose another folder, "
                                  "or pass --force to recompute everything")
    done = {s.name: out.shard_done(s, settings) for s in shards}
    pending = [s for s in shards if done[s.name] is None]
    out.write_job({"status": "running", "settings": settings.fingerprint(), "inputs": inputs,
                   "shards": len(shards), "engine": engine})

    rows = sum(s.rows for s in pending)
    started = time.perf_counter()
    if pending:
        with progress_bar(rows, "embedding", progress, unit="row") as bar:
            if engine == "local":
                from .local_engine import run_local

                run_local(pending, settings, out, str(folder), bar.update, log)
            else:
                run_ray(pending, settings, out, str(folder), bar.update, log, ray or RayOptions())
    seconds = time.perf_counter() - started
    return _finish(out, shards, settings, engine, inputs, len(files), len(shards) - len(pending), rows, seconds)


def _finish(out: OutputFolder, shards: list[ShardSpec], settings: JobSettings, engine: str, inputs: list[str],
            files: int, skipped: int, rows_this_run: int, seconds: float) -> CorpusReport:
    """Read back every shard's metadata, check the rows balance, gather the bad rows, record the report."""
    metas = {}
    for spec in shards:
        meta = out.shard_done(spec, settings)
        if meta is None:
            raise CorpusError(f"shard {out.shard_path(spec.name)} is missing or unreadable after the run; "
                              "rerun the same command to make it")
        metas[spec.name] = meta["counts"]
    failed = [s.name for s in shards if metas[s.name]["rows_failed"]]
    lines = out.write_errors_file(failed)
    report = CorpusReport(
        output=out.uri, engine=engine, variant=settings.artifact.variant,
        manifest_sha256=settings.artifact.manifest_sha256, input_files=files, shards=len(shards),
        shards_skipped=skipped, shards_written=len(shards) - skipped, rows_in=sum(s.rows for s in shards),
        rows_out=sum(m["rows_out"] for m in metas.values()), rows_failed=lines,
        rows_truncated=sum(m["rows_truncated"] for m in metas.values()), rows_this_run=rows_this_run,
        seconds=seconds)
    recorded_failed = sum(m["rows_failed"] for m in metas.values())
    balanced = report.balanced and recorded_failed == lines
    out.write_job({"status": "complete" if balanced else "unbalanced", "settings": settings.fingerprint(),
                   "inputs": inputs, "report": asdict(report)})
    if not balanced:
        raise CorpusError(f"rows do not balance: {report.rows_in} read, {report.rows_out} embedded, {lines} in "
                          f"{ERRORS_FILE} ({recorded_failed} recorded by the shards); rerun with --force")
    out.clean_tmp()
    return report
