"""Run every artifact of a folder on emulated arm64 CPUs and compare with the same artifacts on x86.

``python -m scripts.arm64.check ARTIFACTS [--cpu max|armv8.0|both] [--texts N]`` (or
scripts/check-arm64.sh). ARTIFACTS holds artifact folders (fp32, q8_0, q4_0, ...) as direct
subfolders; the x86 fp32 reference is --fp32, else ARTIFACTS/fp32, else ARTIFACTS/../fp32 (the quant
stage's layout) and is always checked too. For each CPU model and artifact the table gives the mean
and min cosine of the arm64 vectors with the x86 fp32 artifact's and with the same artifact's on x86,
the seconds per encode (one prompt, all texts) under emulation, and PASS/MISS against the x86 targets.
Exit code 0 when every row passes, 1 when one misses, 2 on a usage or setup error.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from runtime.artifact import MANIFEST_NAME, ArtifactError, accuracy_levels, read_manifest
from runtime.cpu import cpu_name
from runtime.outputs import add_json_option, claim_json_option, write_text_atomic
from runtime.vectors import row_cosines

from .emulator import CPU_MODELS, ArmRootError, Emulator, find_root
from .texts import DEFAULT_COUNT, emulation_texts

#: (mean, min) cosine with the x86 fp32 artifact's vectors: the quant targets (quant.fidelity.TARGETS,
#: w8a8 at Q8_0's) and, for fp32 itself, agreement to float rounding.
TARGETS = {"fp32": (0.99999, 0.99999), "q8_0": (0.9995, 0.999), "q4_0": (0.99, 0.97),
           "e4_a8_f4_p4": (0.99, 0.97), "w8a8": (0.9995, 0.999)}
PROMPTS = ("query", "document")


def find_artifacts(folder: Path, fp32: Path | None) -> tuple[Path, dict[str, Path]]:
    """The x86 fp32 reference and ``{name: folder}`` of every artifact to check (fp32 first)."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder; pass the folder that holds the artifact folders "
                            "(fp32, q4_0, ...)")
    if fp32 is None:
        fp32 = next((p for p in (folder / "fp32", folder.parent / "fp32") if (p / MANIFEST_NAME).is_file()), None)
        if fp32 is None:
            raise ArtifactError(f"no fp32 artifact in {folder} or beside it; pass --fp32 DIR (the x86 reference)")
    found = {"fp32": fp32}
    for sub in sorted(p for p in folder.iterdir() if (p / MANIFEST_NAME).is_file()):
        if sub.resolve() != fp32.resolve():
            found[sub.name] = sub
    if len(found) == 1 and not (folder / MANIFEST_NAME).is_file():
        print(f"note: {folder} holds no artifact besides the fp32 reference", file=sys.stderr)
    return fp32, found


def embed_on_host(folder: Path, texts: list[str], prompts: tuple[str, ...]) -> tuple[dict[str, np.ndarray], float]:
    """Raw vectors per prompt from the artifact run natively on this host, and seconds per encode."""
    from runtime import Embedder

    out, seconds = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny model truncates the long text; both sides alike
        emb = Embedder(folder, verify=False)
        for prompt in prompts:
            t0 = time.perf_counter()
            out[prompt] = emb.encode(texts, prompt_name=prompt, normalize=False)
            seconds.append(time.perf_counter() - t0)
    return out, float(np.mean(seconds))


def agreement(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict:
    """Mean (the lowest per-prompt mean, as quant.fidelity judges) and min cosine over prompts and texts."""
    per_prompt = {p: row_cosines(reference[p], got[p]) for p in reference}
    return {"mean": float(min(c.mean() for c in per_prompt.values())),
            "min": float(min(c.min() for c in per_prompt.values())),
            "worst_text": {p: int(c.argmin()) for p, c in per_prompt.items()}}


def verdict(variant: str, vs_fp32: dict) -> str:
    target = TARGETS.get(variant)
    if target is None:
        return "-"
    return "PASS" if vs_fp32["mean"] >= target[0] and vs_fp32["min"] >= target[1] else "MISS"


def run_cpu(emulator: Emulator, artifacts: dict[str, Path], texts: list[str], prompts: tuple[str, ...],
            threads: int, host: dict, workdir: Path, ort_config: list[str] = ()) -> dict:
    """Embed every artifact on one emulated CPU model; rows with cosines and timings."""
    texts_file = workdir / "texts.json"
    texts_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    with emulator.session() as cpu:
        print(f"[{emulator.cpu}] qemu -cpu {emulator.model}: MIDR {cpu['midr']}, features "
              f"{' '.join(cpu['key_features']) or '(no dot product, i8mm, SVE or SME)'}", file=sys.stderr, flush=True)
        rows = {}
        for name, folder in artifacts.items():
            out = workdir / f"{emulator.cpu}-{name}.npz"
            t0 = time.perf_counter()
            print(f"[{emulator.cpu}] {name}: embedding {len(texts)} texts x {len(prompts)} prompts under emulation",
                  file=sys.stderr, flush=True)
            emulator.run("scripts.arm64.guest", "embed", str(folder), "--texts", str(texts_file),
                         "--prompts", ",".join(prompts), "--threads", str(threads), "--out", str(out),
                         *(arg for item in ort_config for arg in ("--ort-config", item)))
            with np.load(out) as data:
                got = {p: data[p] for p in prompts}
            facts = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
            variant = facts["variant"] if name != "fp32" else "fp32"
            vs_fp32 = agreement(host["fp32"]["vectors"], got)
            rows[name] = {"variant": variant, "vs_x86_fp32": vs_fp32,
                          "vs_x86_same": agreement(host[name]["vectors"], got),
                          "encode_s": float(np.mean(list(facts["encode_s"].values()))), "load_s": facts["load_s"],
                          "x86_vs_x86_fp32": agreement(host["fp32"]["vectors"], host[name]["vectors"]),
                          "x86_encode_s": host[name]["encode_s"], "wall_s": time.perf_counter() - t0,
                          "accuracy_level": host[name]["accuracy_level"], "verdict": verdict(variant, vs_fp32),
                          "guest": facts}
            print(f"[{emulator.cpu}] {name}: vs x86 fp32 {vs_fp32['mean']:.6f}/{vs_fp32['min']:.6f}, vs same on x86 "
                  f"{rows[name]['vs_x86_same']['mean']:.6f}/{rows[name]['vs_x86_same']['min']:.6f}, "
                  f"{rows[name]['encode_s']:.1f} s/encode, {rows[name]['verdict']}", file=sys.stderr, flush=True)
    return {"model": emulator.model, "midr": cpu["midr"], "features": cpu["features"],
            "key_features": cpu["key_features"], "rows": rows}


def print_table(result: dict) -> None:
    print(f"arm64 check: {result['texts']} texts x prompts {', '.join(result['prompts'])}; host {result['host_cpu']}; "
          f"onnxruntime {result['onnxruntime']['x86']} (x86) / {result['onnxruntime']['arm64']} (aarch64 wheel); "
          f"{result['threads']} emulated threads; {result['date']}"
          + (f"; arm64 session config {' '.join(result['ort_config'])}" if result["ort_config"] else ""))
    for name, cpu in result["cpus"].items():
        print(f"\n== {name}: qemu -cpu {cpu['model']} (MIDR {cpu['midr']}; "
              f"{' '.join(cpu['key_features']) or 'no asimddp/i8mm/sve/sme'})")
        print(f"{'artifact':12} {'lvl':>3} | {'arm64 vs x86 fp32':^19} | {'arm64 vs same x86':^19} | "
              f"{'(x86 vs x86 fp32)':^19} | {'s/encode':>8} {'x86 s':>6} | {'target':15} verdict")
        print(f"{'':12} {'':>3} |" + f" {'mean':>9} {'min':>9} |" * 3)
        for label, row in cpu["rows"].items():
            a, b, c = row["vs_x86_fp32"], row["vs_x86_same"], row["x86_vs_x86_fp32"]
            target = TARGETS.get(row["variant"])
            name = label if label == row["variant"] else f"{label} ({row['variant']})"
            print(f"{name:12} {row['accuracy_level']:>3} | {a['mean']:9.6f} {a['min']:9.6f} | "
                  f"{b['mean']:9.6f} {b['min']:9.6f} | {c['mean']:9.6f} {c['min']:9.6f} | "
                  f"{row['encode_s']:8.1f} {row['x86_encode_s']:6.2f} | "
                  f"{'%s/%s' % target if target else '-':15} {row['verdict']}")
        print("lvl: MatMulNBits accuracy level; s/encode: seconds for all texts with one prompt, under emulation "
              "(x86 s: natively on the host)")


def check(artifacts_dir: Path, *, fp32: Path | None = None, cpus: list[str] = ("max", "armv8.0"),
          count: int = DEFAULT_COUNT, long: bool = True, prompts: tuple[str, ...] = PROMPTS,
          only: list[str] | None = None,
          threads: int = 2, root: Path | None = None, ort_config: list[str] = ()) -> dict:
    """Run the whole check and return its results (what --json writes)."""
    import onnxruntime

    arm_root = find_root(root)
    bad = [item for item in ort_config if "=" not in item]
    if bad:
        raise ValueError(f"--ort-config takes KEY=VALUE (e.g. mlas.disable_kleidiai=1), got {', '.join(bad)}")
    fp32_dir, artifacts = find_artifacts(artifacts_dir, fp32)
    if only:
        unknown = sorted(set(only) - set(artifacts))
        if unknown:
            raise ArtifactError(f"no artifact folder named {', '.join(unknown)} in {artifacts_dir}; "
                                f"found: {', '.join(artifacts)}")
        artifacts = {k: v for k, v in artifacts.items() if k in only or k == "fp32"}
    emulated = [k for k in artifacts if not only or k in only]
    chosen = emulation_texts(count, long)
    texts = [t["text"] for t in chosen]
    host = {}
    for name, folder in artifacts.items():
        print(f"[x86] {name}: embedding natively ({folder})", file=sys.stderr, flush=True)
        vectors, seconds = embed_on_host(folder, texts, prompts)
        host[name] = {"vectors": vectors, "encode_s": seconds,
                      "accuracy_level": accuracy_levels(read_manifest(folder).get("quantization"))}
    result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "host_cpu": cpu_name(), "host_machine": platform.machine(),
              "texts": len(texts), "text_ids": [t["id"] for t in chosen], "prompts": list(prompts),
              "threads": threads, "ort_config": list(ort_config), "fp32": str(fp32_dir),
              "artifacts": {k: str(v) for k, v in artifacts.items()},
              "onnxruntime": {"x86": onnxruntime.__version__}, "cpus": {}}
    with tempfile.TemporaryDirectory(prefix="arm64-check-") as tmp:
        for cpu in cpus:
            result["cpus"][cpu] = run_cpu(Emulator(arm_root, cpu), {k: artifacts[k] for k in emulated}, texts,
                                          prompts, threads, host, Path(tmp), ort_config)
    some_row = next(iter(next(iter(result["cpus"].values()))["rows"].values()))
    result["onnxruntime"]["arm64"] = some_row["guest"]["onnxruntime"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/check-arm64.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, help="folder whose subfolders are artifacts (fp32, q8_0, q4_0, ...)")
    parser.add_argument("--fp32", type=Path,
                        help="the x86 fp32 reference (default: ARTIFACTS/fp32 or ARTIFACTS/../fp32)")
    parser.add_argument("--cpu", choices=[*CPU_MODELS, "both"], default="both",
                        help="emulated CPU: max (dot product, i8mm, SVE, SME), armv8.0 (Cortex-A53), both (default)")
    parser.add_argument("--texts", type=int, default=DEFAULT_COUNT,
                        help=f"how many short multilingual texts (default {DEFAULT_COUNT}); one of ~300 tokens follows")
    parser.add_argument("--no-long", dest="long", action="store_false", help="leave out the ~300-token text")
    parser.add_argument("--prompts", default=",".join(PROMPTS),
                        help="comma-separated prompt names (default: query,document)")
    parser.add_argument("--only", help="comma-separated artifact folder names to run under emulation (default: all, "
                                       "fp32 included; the x86 fp32 reference is always computed)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads inside the emulated process")
    parser.add_argument("--root", type=Path,
                        help="the arm64 root (default: $EMBEDDINGGEMMA_ARM64_ROOT or ~/.cache/...)")
    parser.add_argument("--ort-config", action="append", default=[], metavar="KEY=VALUE",
                        help="onnxruntime session config entry for the arm64 runs, e.g. mlas.disable_kleidiai=1 "
                             "(repeatable; for finding which kernels cause a difference)")
    add_json_option(parser, "also write the results here", type=Path)
    args = parser.parse_args(argv)
    claim_json_option(parser, args)
    cpus = list(CPU_MODELS) if args.cpu == "both" else [args.cpu]
    try:
        result = check(args.artifacts, fp32=args.fp32, cpus=cpus, count=args.texts, long=args.long,
                       prompts=tuple(args.prompts.split(",")), only=args.only.split(",") if args.only else None,
                       threads=args.threads, root=args.root, ort_config=args.ort_config)
    except (ArmRootError, ArtifactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    rows = [row for cpu in result["cpus"].values() for row in cpu["rows"].values()]
    return 0 if all(row["verdict"] != "MISS" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
