"""One measurement in a fresh process: load a system, warm up, time a workload, report peak RSS.

Run by ``benchmarks.run``; prints one JSON object on its last stdout line. A fresh process per
measurement makes load time and peak resident memory honest (nothing cached from another system).
"""
from __future__ import annotations

import json
import resource
import sys
import time


def _load(system: str, path: str, threads: int):
    t0 = time.perf_counter()
    if system == "onnx":
        from runtime import Embedder

        model = Embedder(path, threads=threads, verify=False)
        encode = lambda texts, bs: model.encode(texts, batch_size=bs)  # noqa: E731
    elif system == "torch":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(path, device="cpu")
        encode = lambda texts, bs: model.encode(texts, batch_size=bs, show_progress_bar=False)  # noqa: E731
    else:
        raise ValueError(f"unknown system {system!r}")
    return encode, time.perf_counter() - t0


def measure(spec: dict) -> dict:
    """Load ``spec['system']`` from ``spec['path']`` and time workload ``spec['workload']``."""
    t_import = time.perf_counter()
    encode, load_s = _load(spec["system"], spec["path"], spec["threads"])
    texts, bs = list(spec["texts"]), int(spec["batch_size"])
    encode(texts[: min(len(texts), 8)], bs)  # warm-up: first-run allocations and kernel selection
    times = []
    if bs == 1:  # latency: one timed call per text
        for text in texts:
            t = time.perf_counter()
            encode([text], 1)
            times.append(time.perf_counter() - t)
    else:
        for _ in range(spec["repeats"]):
            t = time.perf_counter()
            encode(texts, bs)
            times.append(time.perf_counter() - t)
    return {"load_s": load_s, "startup_s": time.perf_counter() - t_import - sum(times), "times": times,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux: VmHWM, which starts afresh at exec;
    ``ru_maxrss`` is carried over from the parent across fork + exec, so a worker would report the
    runner's peak instead of its own (docs/notes/bench.md)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.stdin.read()))))
