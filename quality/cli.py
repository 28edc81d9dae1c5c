"""``embeddinggemma-quality``: run the quality suite on artifact folders and write the comparison report.

    embeddinggemma-quality --artifacts fp32=artifacts/fp32 q8_0=artifacts/q8_0 q4_0=artifacts/q4_0 \\
        --out reports/quality [--reference-st ~/models/embeddinggemma-300m] [--threads 2]

Exit status: 0 when every variant with a target meets it (and sentence-transformers agrees with the
fp32 artifact when asked for), 1 when something misses, 2 on bad arguments or missing data.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import sys
import time
from pathlib import Path
from typing import Iterator

from runtime.artifact import ArtifactError, read_manifest
from runtime.outputs import OutputExistsError, refuse_existing

from . import report as rep
from .datasets import DataUnavailable
from .suite import ArtifactEncoder, RunResult, SentenceTransformerEncoder, random_error_spread, run_suite
from .tasks import PRESETS, TASK_NAMES, build_tasks
from .verdicts import ST_AGREEMENT_POINTS


def _parse_artifacts(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep:  # a bare folder: label it by its name
            label, path = Path(item).name, item
        if not label or not path:
            raise argparse.ArgumentTypeError(f"--artifacts expects LABEL=DIR, got {item!r}")
        out.append((label, Path(path).expanduser()))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"duplicate artifact labels: {labels}")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="embeddinggemma-quality",
        description="Run MTEB-style quality tasks (real labelled data from installed packages) on EmbeddingGemma "
                    "artifact folders and compare them with the fp32 baseline: each task's drop, its standard "
                    "error (how precisely the task's data measure it), how many queries / test texts / "
                    "bootstraps make up each miss, and each task met, missed or not resolved against the targets.")
    p.add_argument("--artifacts", nargs="+", required=True, metavar="LABEL=DIR",
                   help="artifact folders to compare, e.g. fp32=artifacts/fp32 q8_0=artifacts/q8_0")
    p.add_argument("--out", required=True, type=Path, help="folder for report.md, report.json and the PNG plots")
    p.add_argument("--force", action="store_true",
                   help="write into --out even if it holds files (each report file is replaced once its new version "
                        "is complete)")
    p.add_argument("--reference-st", type=Path, metavar="CHECKPOINT_DIR",
                   help="also run sentence-transformers (torch) on this checkpoint and check it agrees with the "
                        f"baseline artifact to {ST_AGREEMENT_POINTS} points")
    p.add_argument("--baseline", help="label of the fp32 baseline (default: 'fp32' if given, else the first)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per model (default: all cores)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="task sizes: 'default' (~240k tokens per variant), 'precise' (every task grown to the end of its "
                        "data for the smallest standard errors: ~1.5x the tokens, 200 k-means bootstraps) or "
                        "'smoke' (a few hundred texts)")
    p.add_argument("--tasks", nargs="+", choices=TASK_NAMES, metavar="TASK",
                   help=f"run only these tasks (default: all: {', '.join(TASK_NAMES)})")
    p.add_argument("--seed", type=int, default=42, help="seed of every subsample (default 42)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--noise-trials", type=int, default=5,
                   help="random-error trials per variant for the noise floor shown beside each drop (default 5)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of artifact files at load")
    p.add_argument("--quiet", action="store_true", help="no per-task progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        artifacts = _parse_artifacts(args.artifacts)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    labels = [lab for lab, _ in artifacts]
    baseline = args.baseline or ("fp32" if "fp32" in labels else labels[0])
    problem = _input_problem(args, artifacts, baseline)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    say = log or (lambda m: None)

    started = time.perf_counter()
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        tasks = build_tasks(args.preset, seed=args.seed, names=args.tasks)
    except DataUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say(f"{len(tasks)} tasks built in {time.perf_counter() - started:.1f} s")

    meta = {"preset": args.preset, "seed": args.seed, "threads": args.threads, "batch_size": args.batch_size,
            # the report is rewritten after every variant: "created" is the last write, this the run's start
            "started": started_at}
    results, report, details = [], None, {}
    for result in _run_artifacts(args, tasks, artifacts, baseline, log):
        results.append(result)
        report = _write(tasks, results, baseline, None, meta, args.out, started, details)
    if args.reference_st is not None:   # without it, the last write above is the whole report
        reference = _run_reference(args, tasks, results[0], log)
        report = _write(tasks, results, baseline, reference, meta, args.out, started, details)
    say(f"report written to {args.out} ({time.perf_counter() - started:.0f} s in all)")
    return _exit_status(report)


def _input_problem(args, artifacts: list[tuple[str, Path]], baseline: str) -> str | None:
    """What makes the inputs unusable (a folder that is not an artifact, an unknown baseline, a
    reference that is not a sentence-transformers checkpoint, an --out that holds files without
    --force), or None."""
    for label, path in artifacts:
        try:
            read_manifest(path)
        except ArtifactError as exc:
            return f"{label}: {exc}"
    labels = [lab for lab, _ in artifacts]
    if baseline not in labels:
        return f"--baseline {baseline!r} is not one of {labels}"
    if args.reference_st is not None and not (args.reference_st / "modules.json").is_file():
        return f"--reference-st {args.reference_st} is not a sentence-transformers checkpoint"
    try:
        refuse_existing(args.out, args.force, empty_ok=True)
    except OutputExistsError as exc:
        return str(exc)
    return None


def _run_artifacts(args, tasks, artifacts, baseline, log) -> Iterator[RunResult]:
    """Run the suite on each artifact, baseline first, one model in memory at a time; yields each
    result as it finishes (with its random-error noise floor against the baseline)."""
    say = log or (lambda m: None)
    # The baseline runs first so every other variant can be compared with it as soon as it finishes.
    order = sorted(artifacts, key=lambda a: a[0] != baseline)
    base = None
    for label, path in order:
        encoder = ArtifactEncoder(path, threads=args.threads, verify=not args.no_verify, batch_size=args.batch_size)
        say(f"[{label}] loaded {path} (variant {encoder.embedder.variant}) in {encoder.load_seconds:.1f} s")
        result = run_suite(encoder, tasks, label=label, log=log)
        del encoder  # one model in memory at a time; nothing but the task data carries over
        gc.collect()
        if base is None:
            base = result
        else:
            t0 = time.perf_counter()
            result.random_error = random_error_spread(tasks, base, result, trials=args.noise_trials)
            say(f"[{label}] random-error noise floor in {time.perf_counter() - t0:.0f} s")
        say(f"[{label}] done in {result.wall_seconds:.0f} s")
        yield result


def _run_reference(args, tasks, base: RunResult, log) -> RunResult:
    """Run sentence-transformers (torch) on the reference checkpoint at the baseline's dims."""
    say = log or (lambda m: None)
    encoder = SentenceTransformerEncoder(args.reference_st, dims=base.dims, threads=args.threads,
                                         batch_size=args.batch_size)
    say(f"[sentence-transformers] loaded {args.reference_st} in {encoder.load_seconds:.1f} s")
    reference = run_suite(encoder, tasks, label="sentence-transformers", log=log)
    del encoder
    gc.collect()
    reference.random_error = random_error_spread(tasks, base, reference, trials=args.noise_trials)
    return reference


def _exit_status(report: dict) -> int:
    """1 when a variant misses its target or sentence-transformers disagrees with the baseline, else 0."""
    failed = any(v["meets_target"] is False for v in report["verdicts"].values())
    if report["reference"] is not None and not report["reference"]["all_agree"]:
        failed = True
    return 1 if failed else 0


def _write(tasks, results, baseline, reference, meta, out, started, details):
    """(Re)write the report with what has run so far, so a long run leaves usable output early
    (``details``: build_report's cache, kept across the rewrites)."""
    meta = {**meta, "suite_wall_seconds": round(time.perf_counter() - started, 1)}
    report = rep.build_report(tasks, results, baseline=baseline, reference=reference, meta=meta, details=details)
    rep.write_report(report, out)
    return report


if __name__ == "__main__":
    sys.exit(main())
