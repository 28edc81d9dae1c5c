"""Native side of the web benchmark (web/bench/bench.js): the Python runtime on one artifact, the same
inputs as the page.

    python -m benchmarks.web_native --artifact DIR --texts TEXTS.json [--threads 2]

TEXTS.json (written by bench.js on the first call with --write-texts) holds one ~30-token query
and the short workload (64 texts of 26-34 tokens) from benchmarks/workloads.py. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.workloads import build_workloads
from runtime import Embedder

QUERY_TOKENS = 30
QUERY_REPEATS = 40
SHORT_REPEATS = 3


def write_texts(artifact: Path, out: Path) -> dict:
    """The query (exactly 30 tokens as the model sees it, no prompt) and the short workload."""
    from tokenizers import Tokenizer

    short = list(build_workloads(artifact / "tokenizer.json", names=("short",))["short"].texts)
    tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    lengths = [len(tok.encode(t).ids) for t in short]
    query = min(short, key=lambda t: abs(len(tok.encode(t).ids) - QUERY_TOKENS))
    data = dict(query=query, query_tokens=len(tok.encode(query).ids), short=short, short_tokens=sum(lengths))
    out.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return data


def measure(artifact: Path, texts: dict, threads: int) -> dict:
    """Load time, single-query p50 and short-workload tokens/s with the Python runtime."""
    t0 = time.perf_counter()
    emb = Embedder(artifact, threads=threads, verify=False)
    load_s = time.perf_counter() - t0
    for _ in range(3):
        emb.encode(texts["query"])
    times = []
    for _ in range(QUERY_REPEATS):
        t = time.perf_counter()
        emb.encode(texts["query"])
        times.append(time.perf_counter() - t)
    emb.encode(texts["short"], batch_size=64)
    rates = []
    for _ in range(SHORT_REPEATS):
        t = time.perf_counter()
        emb.encode(texts["short"], batch_size=64)
        rates.append(texts["short_tokens"] / (time.perf_counter() - t))
    return dict(variant=emb.variant, load_s=load_s, query_p50_ms=1000 * statistics.median(times),
                short_tokens_per_s=statistics.median(rates), threads=threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--texts", type=Path, required=True)
    p.add_argument("--write-texts", action="store_true", help="build TEXTS.json from this artifact's tokenizer first")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    texts = write_texts(args.artifact, args.texts) if args.write_texts else json.loads(args.texts.read_text(encoding="utf-8"))
    print(json.dumps(measure(args.artifact, texts, args.threads)))


if __name__ == "__main__":
    main()
