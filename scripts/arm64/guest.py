"""What runs inside the emulated arm64 process (``python -m scripts.arm64.guest``).

``cpu``: print, as JSON, what the emulated CPU offers: its HWCAP/HWCAP2 feature names (read with
getauxval, as the kernel would report them), its MIDR (read with ``mrs``, which Linux and qemu-user
both allow at EL0), and the /proc/cpuinfo text a real arm64 kernel would show for it. qemu-user 7.2
passes the host's x86 /proc/cpuinfo through, which onnxruntime's bundled cpuinfo library cannot parse
(it crashes on import), so the host installs this text as ROOT/proc/cpuinfo before each run.
Standard library only: it must run before onnxruntime can be imported.

``embed``: embed texts with one artifact through ``runtime.Embedder`` (from this checkout) and save
the raw vectors per prompt to an .npz, with timings and what the runtime saw in a .json beside it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import platform
import sys
import time
from pathlib import Path

AT_HWCAP, AT_HWCAP2 = 16, 26
#: Linux's names for the AT_HWCAP bits (arch/arm64/kernel/cpuinfo.c), bit 0 first.
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
               "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
#: Linux's names for the AT_HWCAP2 bits, bit 0 first.
HWCAP2_NAMES = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 "
                "smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16 cssc rprfm sve2p1 sme2 sme2p1").split()
#: The features that pick onnxruntime's int8 kernel families, in the order the check reports them.
KEY_FEATURES = ("asimddp", "i8mm", "sve", "sve2", "bf16", "sme", "sme2")


def _getauxval(kind: int) -> int:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return int(libc.getauxval(kind))


def _read_midr() -> int:
    """MIDR_EL1 via ``mrs x0, midr_el1; ret`` in an executable page (0 when that is not allowed)."""
    code = (0xD5380000).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return 0
    page.write(code)
    func = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return int(func())


def cpu_description() -> dict:
    """HWCAP feature names, MIDR fields and a /proc/cpuinfo text for the CPU this process runs on."""
    if platform.machine() != "aarch64":
        raise SystemExit(f"scripts.arm64.guest cpu must run on aarch64 (under qemu-aarch64), not {platform.machine()}")
    hwcap, hwcap2 = _getauxval(AT_HWCAP), _getauxval(AT_HWCAP2)
    features = [n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1]
    features += [n for i, n in enumerate(HWCAP2_NAMES) if hwcap2 >> i & 1]
    midr = _read_midr()
    fields = {"implementer": midr >> 24 & 0xFF, "variant": midr >> 20 & 0xF, "part": midr >> 4 & 0xFFF,
              "revision": midr & 0xF}
    block = (f"BogoMIPS\t: 100.00\nFeatures\t: {' '.join(features)}\nCPU implementer\t: 0x{fields['implementer']:02x}\n"
             f"CPU architecture: 8\nCPU variant\t: 0x{fields['variant']:x}\nCPU part\t: 0x{fields['part']:03x}\n"
             f"CPU revision\t: {fields['revision']}\n")
    cpuinfo = "".join(f"processor\t: {i}\n{block}\n" for i in range(os.cpu_count() or 1))
    return {"hwcap": hex(hwcap), "hwcap2": hex(hwcap2), "midr": hex(midr), "features": features,
            "key_features": [f for f in KEY_FEATURES if f in features], "cpuinfo": cpuinfo}


def embed(artifact: str, texts: list[str], prompts: list[str], threads: int | None, out: Path,
          ort_config: dict[str, str] | None = None) -> dict:
    """Embed ``texts`` with every prompt; write ``out`` (.npz, raw vectors per prompt) and return facts.

    ``ort_config``: onnxruntime session config entries (e.g. ``mlas.disable_kleidiai=1``) to try."""
    import warnings

    import numpy as np
    import onnxruntime as ort

    from runtime import Embedder
    from runtime.cpu import cpu_flags, has_int8_dot
    from runtime.embedder import runtime_session_options

    warnings.simplefilter("ignore")  # a tiny model truncates the long text; the host side does the same
    t0 = time.perf_counter()
    options = runtime_session_options(threads)
    for key, value in (ort_config or {}).items():
        options.add_session_config_entry(key, value)
    emb = Embedder(artifact, verify=False, threads=threads, session_options=options)
    facts = {"machine": platform.machine(), "onnxruntime": ort.__version__, "numpy": np.__version__,
             "variant": emb.variant, "tokenizer": emb.tokenizer_backend, "load_s": time.perf_counter() - t0,
             "runtime_cpu_has_int8_dot": has_int8_dot(cpu_flags()), "encode_s": {}}
    vectors = {}
    for prompt in prompts:
        t0 = time.perf_counter()
        vectors[prompt] = emb.encode(texts, prompt_name=prompt, normalize=False)
        facts["encode_s"][prompt] = time.perf_counter() - t0
        print(f"  {emb.variant} {prompt}: {len(texts)} texts in {facts['encode_s'][prompt]:.1f} s", file=sys.stderr,
              flush=True)
    np.savez(out, **vectors)
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.arm64.guest", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("cpu", help="print the emulated CPU's features, MIDR and /proc/cpuinfo text as JSON")
    p = sub.add_parser("embed", help="embed texts with one artifact and save the vectors")
    p.add_argument("artifact")
    p.add_argument("--texts", required=True, help="JSON list of strings")
    p.add_argument("--prompts", required=True, help="comma-separated prompt names")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help=".npz to write; facts go to the same name with .json")
    p.add_argument("--ort-config", action="append", default=[], metavar="KEY=VALUE",
                   help="onnxruntime session config entry, e.g. mlas.disable_kleidiai=1 (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "cpu":
        print(json.dumps(cpu_description()))
        return 0
    out = Path(args.out)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    config = dict(item.split("=", 1) for item in args.ort_config)
    facts = embed(args.artifact, texts, args.prompts.split(","), args.threads, out, config)
    facts["ort_config"] = config
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
