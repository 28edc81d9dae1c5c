"""Bounded load test of ``embeddinggemma serve`` on 127.0.0.1: cross-request batching vs. without.

    python -m serve.loadtest --model artifacts/fp32                      # 16 clients x 30 s per mode
    python -m serve.loadtest --model artifacts/fp32 --modes batched,per-request,single --json out.json

For each mode it starts the server as a subprocess on a free loopback port (never another host),
runs N client threads for the given time with a fixed, seeded mix of requests (short queries,
small batches of short texts, longer documents with titles; mixed prompts and Matryoshka dims),
checks every returned vector against ``runtime.Embedder`` computed in this process beforehand, and
reports requests/s, texts/s, tokens/s and latency percentiles, plus the server's batch counters.

Modes: ``batched`` (cross-request batching, --max-batch-texts), ``per-request`` (each request
batched alone: --no-cross-request-batching), ``single`` (--max-batch-texts 1: one text at a time).
Not a test: it takes minutes and its numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.outputs import add_json_option, claim_json_option, write_text_atomic

HOST = "127.0.0.1"  # loopback only, by design: this script must not load anybody else's server
MAX_CLIENTS = 64
MAX_DURATION = 300.0
MODES = {
    "batched": [],
    "per-request": ["--no-cross-request-batching"],
    "single": ["--max-batch-texts", "1"],
}
MIN_COSINE = 0.9999  # fp32 through a differently padded batch agrees to ~1e-6; anything lower is a bug

WORDS = ("planet orbit moon star galaxy comet nebula red giant dwarf iron oxide surface crater dust storm "
         "atmosphere pressure temperature water ice ocean river mountain valley forest desert city harbour "
         "bridge railway engine signal network protocol server request batch latency memory cache kernel "
         "thread queue model vector embedding search query document title language translation grammar "
         "history empire river trade market price policy science experiment theory evidence measurement "
         "music rhythm melody painting colour light shadow garden flower season winter summer harvest").split()


@dataclass
class Item:
    """A pool text with the prompt it is always sent with and its reference (raw, full-size) vector."""

    text: str
    prompt: str
    title: str | None = None
    raw: np.ndarray | None = None


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    texts: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    min_cosine: float = 1.0
    checked: int = 0


def build_pool(rng: np.random.Generator, n_short: int = 300, n_long: int = 24) -> tuple[list[Item], list[Item], list[Item]]:
    """Short queries (~10 tokens), short STS texts and long titled documents (~80-240 words), reproducibly."""
    def sentence(lo, hi):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi + 1))))
    queries = [Item(f"{sentence(4, 14)}? ({i})", "query") for i in range(n_short // 2)]
    sts = [Item(f"{sentence(5, 20)}. [{i}]", "STS") for i in range(n_short - n_short // 2)]
    docs = [Item(". ".join(sentence(8, 20) for _ in range(int(rng.integers(6, 13)))) + f". #{i}", "document",
                 title=sentence(2, 5) if i % 2 == 0 else None) for i in range(n_long)]
    return queries, sts, docs


def compute_references(model: str, items: list[Item], threads: int) -> tuple[int, ...]:
    """Fill in raw full-size vectors for every pool item from the runtime itself (the ground truth);
    returns the model's Matryoshka dims."""
    from runtime import Embedder

    emb = Embedder(model, threads=threads)
    for prompt in sorted({it.prompt for it in items}):
        group = [it for it in items if it.prompt == prompt]
        if prompt == "document":
            raw = emb.encode_document([it.text for it in group], titles=[it.title for it in group], normalize=False)
        else:
            raw = emb.encode([it.text for it in group], prompt_name=prompt, normalize=False)
        for it, vec in zip(group, raw):
            it.raw = vec
    return emb.dims


def make_request(rng: np.random.Generator, queries, sts, docs, dims) -> tuple[dict, list[Item], int]:
    """One request of the mix: 60% a single query, 25% 2-8 short texts, 15% 1-2 long documents."""
    kind = rng.random()
    dim = int(rng.choice(dims))
    if kind < 0.60:
        items = [queries[int(rng.integers(len(queries)))]]
        body = {"input": items[0].text, "prompt_name": "query"}
    elif kind < 0.85:
        items = [sts[int(i)] for i in rng.choice(len(sts), size=int(rng.integers(2, 9)), replace=False)]
        body = {"input": [it.text for it in items], "task": "STS"}
    else:
        items = [docs[int(i)] for i in rng.choice(len(docs), size=int(rng.integers(1, 3)), replace=False)]
        body = {"input": [it.text for it in items], "titles": [it.title for it in items]}
    body.update({"model": "gemma", "dimensions": dim, "encoding_format": "base64"})
    return body, items, dim


def client_loop(base: str, seed: int, deadline: float, pools, dims, out: Result) -> None:
    import httpx

    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=base, timeout=600) as http:
        while time.monotonic() < deadline:
            body, items, dim = make_request(rng, *pools, dims)
            start = time.perf_counter()
            try:
                r = http.post("/v1/embeddings", json=body)
            except httpx.HTTPError as exc:
                out.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            if r.status_code != 200:
                out.errors.append(f"{r.status_code}: {r.text[:200]}")
                continue
            payload = r.json()
            got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in payload["data"]])
            ref = np.stack([it.raw[:dim] for it in items])
            ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
            cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1)
            out.min_cosine = min(out.min_cosine, float(cos.min()))
            out.checked += len(items)
            if got.shape != (len(items), dim) or cos.min() < MIN_COSINE:
                out.errors.append(f"wrong vectors: shape {got.shape}, min cosine {cos.min():.6f}")
                continue
            out.latencies.append(elapsed)
            out.texts += len(items)
            out.tokens += payload["usage"]["total_tokens"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run_mode(mode: str, args, pools, dims) -> dict:
    """Start a server in ``mode``, load it for ``args.duration`` seconds, stop it; return the numbers."""
    import httpx

    port = free_port()
    base = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "serve", "--model", f"gemma={args.model}", "--host", HOST,
           "--port", str(port), "--threads", str(args.threads), "--max-batch-texts", str(args.max_batch_texts),
           "--no-verify", "--log-level", "warning", "--no-access-log", *MODES[mode]]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server failed to start: {proc.stderr.read().decode()}")
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not come up within 300 s")
            time.sleep(0.2)
        warm = Result()  # a few requests so first-call allocations are not measured
        client_loop(base, 12345, time.monotonic() + 3, pools, dims, warm)
        before = httpx.get(base + "/health").json()["models"]["gemma"]

        results = [Result() for _ in range(args.clients)]
        start = time.monotonic()
        stop_at = start + args.duration
        threads = [threading.Thread(target=client_loop, args=(base, args.seed + i, stop_at, pools, dims, results[i]))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start  # includes the requests still running at the deadline
        after = httpx.get(base + "/health").json()["models"]["gemma"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()

    lat = np.asarray([x for r in results for x in r.latencies])
    batches = after["batches"] - before["batches"]
    texts_run = after["texts"] - before["texts"]
    return {
        "mode": mode, "elapsed_s": round(elapsed, 1), "requests": int(lat.size),
        "requests_per_s": lat.size / elapsed, "texts_per_s": sum(r.texts for r in results) / elapsed,
        "tokens_per_s": sum(r.tokens for r in results) / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1e3) if lat.size else None,
        "p95_ms": float(np.percentile(lat, 95) * 1e3) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99) * 1e3) if lat.size else None,
        "batches": batches, "mean_texts_per_batch": texts_run / batches if batches else 0.0,
        "cross_request_batches": after["cross_request_batches"] - before["cross_request_batches"],
        "max_requests_in_batch": after["max_requests_in_batch"],
        "errors": sum(len(r.errors) for r in results), "first_errors": [e for r in results for e in r.errors][:3],
        "vectors_checked": sum(r.checked for r in results),
        "min_cosine": min(r.min_cosine for r in results),
    }


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    head = ("| mode | requests | req/s | texts/s | tokens/s | p50 ms | p95 ms | p99 ms | texts/batch | "
            "cross-request batches | errors | vectors checked (min cos) |\n| " + " | ".join(["---"] * 12) + " |")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['texts_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {r['p50_ms'] or 0:.0f} | {r['p95_ms'] or 0:.0f} | {r['p99_ms'] or 0:.0f} | "
                     f"{r['mean_texts_per_batch']:.1f} | {r['cross_request_batches']} | {r['errors']} | "
                     f"{r['vectors_checked']} ({r['min_cosine']:.7f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the load test; prints a Markdown table (and writes JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m serve.loadtest", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR", help="artifact folder to serve")
    parser.add_argument("--clients", type=int, default=16, help=f"concurrent clients (default 16, at most {MAX_CLIENTS})")
    parser.add_argument("--duration", type=float, default=30.0, help=f"seconds per mode (default 30, at most {MAX_DURATION:.0f})")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads in the server (default 2)")
    parser.add_argument("--max-batch-texts", type=int, default=32, help="batch size for the batched modes (default 32)")
    parser.add_argument("--modes", default="batched,single", help=f"comma list of {', '.join(MODES)} (default batched,single)")
    parser.add_argument("--seed", type=int, default=0)
    add_json_option(parser, "also write the results here")
    args = parser.parse_args(argv)
    claim_json_option(parser, args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--clients must be 1-{MAX_CLIENTS} and --duration 0-{MAX_DURATION:.0f} s (this test is bounded)")

    rng = np.random.default_rng(args.seed)
    queries, sts, docs = build_pool(rng)
    t0 = time.monotonic()
    dims = compute_references(args.model, queries + sts + docs, args.threads)
    print(f"references for {len(queries) + len(sts) + len(docs)} texts in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    rows = []
    for mode in modes:
        print(f"mode {mode}: {args.clients} clients x {args.duration:.0f} s ...", file=sys.stderr)
        rows.append(run_mode(mode, args, (queries, sts, docs), dims))
        print(json.dumps(rows[-1]), file=sys.stderr)
    info = {"model": str(args.model), "clients": args.clients, "duration_s": args.duration, "threads": args.threads,
            "max_batch_texts": args.max_batch_texts, "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(table(rows))
    print(json.dumps(info))
    if args.json:
        write_text_atomic(args.json, json.dumps({"info": info, "results": rows}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
