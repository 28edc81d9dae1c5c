"""``python -m benchmarks.corpus``: rows/s and tokens/s of ``embeddinggemma embed-corpus`` per variant
and engine: the local engine, Ray on one node (its overhead over local), and Ray on two nodes that
share this machine's cores (the scaling line).

Each run is a fresh ``python -m batch`` process (under ``nice``, in its own session like the Ray
nodes, which run at the same niceness) on the same generated corpus: passages
of 50-300 tokens joined from whole sentences of the repository's multilingual text corpus, written as
Parquet files. Ray runs join a cluster started before the run (``benchmarks.ray_cluster``), so cluster
boot is not counted; actor start and model load are, as model load is for the local engine. A tiny
job of one shard per configuration measures that fixed cost ("startup") separately.

Wall time is what a user waits, but on shared cores it measures the neighbours too; CPU time (the
job process, plus every process of the Ray nodes while the job runs) is what the job costs, and
gives the tokens per core-second that size a cluster.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from runtime.artifact import ArtifactError, read_manifest
from runtime.cpu import cpu_name
from runtime.outputs import OutputExistsError, refuse_existing, write_text_atomic
from runtime.prompts import with_prompts
from runtime.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
#: name: (CPUs of each Ray node, or None for the local engine; extra embed-corpus arguments)
CONFIGS = {
    "local": (None, ["--engine", "local"]),
    "ray-1node-1x2": ([2], ["--engine", "ray", "--actors", "1", "--threads", "2"]),
    "ray-1node-2x1": ([2], ["--engine", "ray", "--actors", "2", "--threads", "1"]),
    "ray-2nodes-2x1": ([1, 1], ["--engine", "ray", "--actors", "2", "--threads", "1"]),
}
PROMPT = "document"
TICKS = os.sysconf("SC_CLK_TCK")
IDLE_SECONDS = 30
TINY_ROWS = 16
ROWS_PER_FILE = 2000
#: Shards per actor by default: with a few per actor the last ones end close together; with one,
#: a 600-passage corpus in 1000-row shards left the second actor idle (docs/notes/corpus.md).
SHARDS_PER_ACTOR = 6


def default_rows_per_shard(rows: int, configs: list[str]) -> int:
    """Rows per shard that give every actor of the largest configuration ``SHARDS_PER_ACTOR`` shards."""
    actors = max((int(extra[extra.index("--actors") + 1]) for c in configs
                  for extra in [CONFIGS[c][1]] if "--actors" in extra), default=1)
    return max(1, -(-rows // (actors * SHARDS_PER_ACTOR)))


def build_passages(artifact: str, count: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """``count`` passages whose model input (document prompt included) has ``lo``..``hi`` tokens: random
    target lengths, filled with randomly drawn whole sentences."""
    from benchmarks.workloads import CORPUS, _sentences

    manifest = read_manifest(artifact)
    tok = load_tokenizer(Path(artifact), manifest, "auto")
    sentences = _sentences(json.loads(CORPUS.read_text(encoding="utf-8")))
    lengths = [len(ids) - 2 for ids in tok.encode_batch(sentences)[0]]  # without BOS/EOS
    overhead = len(tok.encode_batch(with_prompts(["x"], manifest["prompts"], prompt_name=PROMPT))[0][0]) - 1
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        target = rng.randint(lo, hi) - overhead
        parts, total = [], 0
        for _ in range(200):
            i = rng.randrange(len(sentences))
            if total + lengths[i] <= hi - overhead:
                parts.append(sentences[i])
                total += lengths[i]
            if total >= target:
                break
        text = " ".join(parts)
        if lo <= count_tokens(tok, manifest, [text])[0] <= hi:
            out.append(text)
    return out


def count_tokens(tok, manifest: dict, texts: list[str]) -> list[int]:
    """Tokens the model reads per text with the document prompt (BOS and EOS included)."""
    return [len(ids) for ids in tok.encode_batch(with_prompts(texts, manifest["prompts"], prompt_name=PROMPT))[0]]


def write_corpus(texts: list[str], folder: Path) -> None:
    """The passages as Parquet files of ``ROWS_PER_FILE`` rows with ids ``p<n>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, len(texts), ROWS_PER_FILE)):
        chunk = texts[start:start + ROWS_PER_FILE]
        pq.write_table(pa.table({"id": [f"p{start + i}" for i in range(len(chunk))], "text": chunk}),
                       folder / f"part-{f:03d}.parquet")


class CpuMeter:
    """CPU seconds used by the processes of some sessions (the Ray nodes and their workers) while it
    runs: sampled from /proc, so a worker that exits keeps its last sample. CPU time, unlike wall time,
    does not grow when other jobs share the cores."""

    def __init__(self, sessions: list[int], period: float = 0.5):
        self.sessions, self.period = sessions, period
        self.base = self._read()
        self.last = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> dict[int, float]:
        from benchmarks.ray_cluster import session_pids

        out = {}
        for session in self.sessions:
            for pid in session_pids(session):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                fields = stat[stat.rindex(")") + 2:].split()
                out[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.last.update(self._read())

    def __enter__(self) -> "CpuMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.last.update(self._read())

    @property
    def seconds(self) -> float:
        """CPU seconds since the meter started."""
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.last.items())


def run_job(corpus: Path, out: Path, artifact: str, extra: list[str], address: str | None, rows_per_shard: int,
            nice: int, sessions: list[int]) -> dict:
    """One ``python -m batch`` run: its ``_job.json`` report, the process's wall time and the CPU seconds
    of the job process and of the Ray nodes' processes."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", "batch", str(corpus), "--output", str(out),
           "--model", artifact, "--prompt-name", PROMPT, "--rows-per-shard", str(rows_per_shard), "--no-progress",
           *extra, *(["--address", address] if address else [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with CpuMeter(sessions) as cluster_cpu:
        # its own session, like the Ray nodes: with autogrouping, the CPU share is per session
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, start_new_session=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    job_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "_job.json").read_text())["report"]
    return dict(report, wall_s=wall, cpu_s=job_cpu + cluster_cpu.seconds)


def marginal(entry: dict, tiny_rows: int, tiny_tokens: int) -> dict:
    """Rates from the difference between the full job and the one-shard job, so the fixed cost (process
    or actor start, model load) drops out: what each extra passage costs; plus that fixed cost."""
    rows, tokens = entry["rows"] - tiny_rows, entry["tokens"] - tiny_tokens
    cpu, wall = entry["cpu_s"] - entry["startup_cpu_s"], entry["seconds"] - entry["startup_s"]
    rate = tokens / cpu
    return {"marginal_rows_per_s": rows / wall, "marginal_tokens_per_s": tokens / wall,
            "marginal_tokens_per_cpu_s": rate, "fixed_cpu_s": entry["startup_cpu_s"] - tiny_tokens / rate}


def measure(artifacts: dict[str, str], configs: list[str], corpus: Path, tiny: Path, work: Path, tokens: int,
            rows: int, rows_per_shard: int, nice: int, tiny_tokens: int) -> list[dict]:
    """Every (config, variant) run, grouped by cluster shape so each cluster starts once."""
    from benchmarks.ray_cluster import LocalRayCluster

    results = []
    for config in configs:
        cpus, extra = CONFIGS[config]
        cluster = LocalRayCluster(cpus, nice=nice) if cpus else None
        address = cluster.__enter__() if cluster else None
        idle = 0.0
        if cluster:
            with CpuMeter(cluster.sessions) as meter:
                time.sleep(IDLE_SECONDS)  # what the cluster's own processes use with no job
            idle = meter.seconds / IDLE_SECONDS
        try:
            for name, path in artifacts.items():
                sessions = cluster.sessions if cluster else []
                startup = run_job(tiny, work / "tiny-out", path, extra, address, rows_per_shard, nice, sessions)
                report = run_job(corpus, work / "out", path, extra, address, rows_per_shard, nice, sessions)
                assert report["rows_out"] == rows and report["rows_failed"] == 0, report
                seconds = report["seconds"]
                entry = {"config": config, "variant": name, "rows": rows, "tokens": tokens, "seconds": seconds,
                         "wall_s": report["wall_s"], "rows_per_s": rows / seconds, "tokens_per_s": tokens / seconds,
                         "startup_s": startup["seconds"], "cpu_s": report["cpu_s"], "startup_cpu_s": startup["cpu_s"],
                         "tokens_per_cpu_s": tokens / report["cpu_s"], "cluster_idle_cpu_per_s": idle,
                         "load": os.getloadavg()[0]}
                entry.update(marginal(entry, TINY_ROWS, tiny_tokens))
                results.append(entry)
                print(json.dumps(entry), file=sys.stderr, flush=True)
        finally:
            if cluster:
                cluster.__exit__()
    return results


def render(results: list[dict], meta: dict) -> str:
    """Markdown tables: the whole job (what a user waits for), then the marginal rates and fixed costs,
    each against the local engine of the same variant."""
    local = {r["variant"]: r for r in results if r["config"] == "local"}

    def versus(r: dict, key: str) -> str:
        ref = local.get(r["variant"])
        if not ref or ref is r:
            return "–"
        change = r[key] / ref[key] - 1
        return f"{change:+.1%}"

    lines = [f"CPU: {meta['cpu']} ({meta['cores']} cores), {meta['rows']} passages of {meta['lo']}-{meta['hi']} "
             f"tokens ({meta['tokens']} tokens with the document prompt, mean {meta['tokens'] / meta['rows']:.0f}), "
             f"{meta['rows_per_shard']} rows per shard, nice {meta['nice']}; load average {meta['load_before']:.1f} "
             f"before, {meta['load_after']:.1f} after; {meta['date']}", "",
             "Whole job (model load and actor start included):", "",
             "| variant | engine | rows/s | tokens/s | vs local | job s | CPU s | tokens per CPU-s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['config']} | {r['rows_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{versus(r, 'tokens_per_s')} | {r['seconds']:.0f} | {r['cpu_s']:.0f} | "
                     f"{r['tokens_per_cpu_s']:.0f} |")
    lines += ["", f"Marginal (full job minus a {TINY_ROWS}-passage job) and fixed cost:", "",
              "| variant | engine | rows/s | tokens/s | vs local | tokens per CPU-s | vs local | fixed CPU s "
              "| idle cluster CPU |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['config']} | {r['marginal_rows_per_s']:.2f} | "
                     f"{r['marginal_tokens_per_s']:.0f} | {versus(r, 'marginal_tokens_per_s')} | "
                     f"{r['marginal_tokens_per_cpu_s']:.0f} | {versus(r, 'marginal_tokens_per_cpu_s')} | "
                     f"{r['fixed_cpu_s']:.1f} | {r.get('cluster_idle_cpu_per_s', 0):.3f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  python -m benchmarks.corpus --artifacts q4_0=artifacts/q4_0 "
                                            "w8a8=artifacts/w8a8 --passages 20000 --out corpus-bench")
    parser.add_argument("--artifacts", nargs="+", required=True, metavar="NAME=DIR", help="artifact folders")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--passages", type=int, default=20000, help="passages in the corpus (default 20000)")
    parser.add_argument("--min-tokens", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--rows-per-shard", type=int, default=None,
                        help=f"rows per shard (default: {SHARDS_PER_ACTOR} shards per actor of the largest configuration, "
                             "so every actor stays busy to the end)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the measured processes (default 10)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--force", action="store_true", help="write into --out even if it holds files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, run every configuration, write results.json and results.md."""
    args = build_parser().parse_args(argv)
    try:
        refuse_existing(args.out, args.force, empty_ok=True)
    except OutputExistsError as exc:
        raise SystemExit(f"error: {exc}") from None
    artifacts = {}
    for item in args.artifacts:
        name, _, path = item.partition("=")
        name, path = (name, path) if path else (Path(item).name, item)
        try:
            read_manifest(path)
        except ArtifactError as exc:
            raise SystemExit(f"error: {name}: {exc}") from None
        artifacts[name] = str(Path(path).resolve())
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"error: unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")

    rows_per_shard = args.rows_per_shard or default_rows_per_shard(args.passages, configs)
    work = Path(args.work or tempfile.mkdtemp(prefix="corpus-bench-"))
    first = next(iter(artifacts.values()))
    texts = build_passages(first, args.passages, args.min_tokens, args.max_tokens)
    manifest = read_manifest(first)
    counts = count_tokens(load_tokenizer(Path(first), manifest, "auto"), manifest, texts)
    tokens, tiny_tokens = sum(counts), sum(counts[:TINY_ROWS])
    write_corpus(texts, work / "corpus")
    write_corpus(texts[:TINY_ROWS], work / "tiny")
    meta = {"cpu": cpu_name(), "cores": os.cpu_count(), "rows": len(texts), "tokens": tokens, "lo": args.min_tokens,
            "hi": args.max_tokens, "rows_per_shard": rows_per_shard, "nice": args.nice,
            "tiny_tokens": tiny_tokens, "load_before": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d")}
    try:
        results = measure(artifacts, configs, work / "corpus", work / "tiny", work, tokens, len(texts),
                          rows_per_shard, args.nice, tiny_tokens)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    meta["load_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    table = render(results, meta)
    write_text_atomic(out / "results.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
