"""The machine's ceiling: peak arithmetic rate from the CPU's flags, cores and clock, and the model's
arithmetic per text, so each benchmark row can say what fraction of the peak it reaches.

Peak = FLOPs per cycle per core (vector width x FMA units x 2, from the flags) x cores x clock. The
units per core are not in the flags: the assumption made is stated with every number. The clock is
measured with a dependent add chain where a C compiler is at hand (a VM's /proc/cpuinfo gives the
nominal clock, below the boost clock the cores run at), else read from lscpu / /proc/cpuinfo.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Peak:
    """Peak rates of one machine and how they were reckoned."""

    cores: int
    ghz: float
    clock_source: str
    fp32_per_cycle: int      # fp32 FLOPs per cycle per core (an FMA counts 2)
    int8_per_cycle: int      # int8 ops per cycle per core (a multiply-add counts 2)
    assumption: str
    int8_matrix_per_cycle: int = 0   # int8 ops per cycle per core of a matrix unit (AMX); 0: none

    @property
    def fp32_gflops(self) -> float:
        return self.fp32_per_cycle * self.cores * self.ghz

    @property
    def int8_gops(self) -> float:
        return self.int8_per_cycle * self.cores * self.ghz

    @property
    def int8_matrix_gops(self) -> float:
        return self.int8_matrix_per_cycle * self.cores * self.ghz


def share_text(fp32: float | None = None, int8: float | None = None, matrix: float | None = None) -> str:
    """A rate's shares of the peaks given (fractions): "12 % of AMX int8, 94 % of vector int8, 3 % of
    fp32"; the vector int8 peak is called "int8" when no matrix-unit share is given."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f} %" if x < 0.1 else f"{100 * x:.0f} %"

    parts = []
    if matrix is not None:
        parts.append(f"{pct(matrix)} of AMX int8")
    if int8 is not None:
        parts.append(f"{pct(int8)} of {'vector int8' if matrix is not None else 'int8'}")
    if fp32 is not None:
        parts.append(f"{pct(fp32)} of fp32")
    return ", ".join(parts)


def per_cycle(flags: set[str], vendor: str = "") -> tuple[int, int, str]:
    """(fp32 FLOPs, int8 ops) per cycle per core for a flag set, and the assumption behind them."""
    amd = "amd" in vendor.lower()
    if "avx512f" in flags:
        if amd:   # Zen 4 runs 512-bit FMAs on its two 256-bit FMA pipes
            fp32, why = 32, "AVX-512 on two 256-bit FMA pipes (AMD Zen 4)"
        else:
            fp32, why = 64, "AVX-512 with two 512-bit FMA units (Xeon Gold/Platinum; one-unit parts reach half)"
    elif "avx2" in flags and "fma" in flags:
        fp32, why = 32, "AVX2 with two 256-bit FMA units"
    elif "avx" in flags:
        fp32, why = 16, "AVX without FMA: one 256-bit multiply and one add per cycle"
    elif "asimd" in flags or "neon" in flags:
        fp32, why = 16, "NEON with two 128-bit FMA units (Apple's big cores have four)"
    else:
        fp32, why = 8, "SSE: one 128-bit multiply and one add per cycle"
    from runtime.cpu import has_int8_dot

    if has_int8_dot(flags):   # VNNI / sdot: 4 multiply-adds per 32-bit lane at the FMA's rate
        return fp32, 4 * fp32, why + "; int8 dot products (VNNI / dotprod) at 4x the fp32 lane rate"
    return fp32, 2 * fp32, why + "; int8 without dot products: 16-bit pair products, 2x the fp32 lane rate"


def matrix_int8_per_cycle(flags: set[str]) -> tuple[int, str]:
    """int8 ops per cycle per core of the CPU's matrix unit (0 without one), and the assumption.

    Only onnxruntime's integer GEMM (MatMulIntegerToFloat, MatMulInteger: the w8a8 path) has AMX
    kernels; MatMulNBits runs on the vector units at every accuracy level (docs/notes/bench.md).
    """
    if "amx_int8" in flags:   # TDPBUSD: a 16 x 64 by 64 x 16 tile product (16,384 multiply-adds) per 16 cycles
        return 2048, "AMX-INT8 tiles: 1,024 int8 multiply-adds per cycle per core"
    return 0, ""


_CHAIN_C = r"""
#include <stdint.h>
uint64_t chain(uint64_t n) {
    uint64_t x = 1;
    for (uint64_t i = 0; i < n; i++) {
#if defined(__x86_64__)
        __asm__ volatile("add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\t"
                         "add %0, %0\n\tadd %0, %0\n\tadd %0, %0\n\tadd %0, %0" : "+r"(x));
#elif defined(__aarch64__)
        __asm__ volatile("add %0, %0, %0\n\tadd %0, %0, %0\n\tadd %0, %0, %0\n\tadd %0, %0, %0\n\t"
                         "add %0, %0, %0\n\tadd %0, %0, %0\n\tadd %0, %0, %0\n\tadd %0, %0, %0" : "+r"(x));
#else
#error unsupported
#endif
    }
    return x;
}
"""


def measure_clock_ghz(rounds: int = 200, iterations: int = 250_000) -> float | None:
    """The core clock in GHz from a chain of dependent register adds (one cycle each on every x86 and
    Arm core), best of ``rounds``; None without a C compiler or on another architecture. Many short
    rounds (~0.5 ms each), so that on a busy host some run undisturbed."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "chain.c", Path(tmp) / "chain.so"
        src.write_text(_CHAIN_C)
        if subprocess.run([cc, "-O1", "-shared", "-fPIC", str(src), "-o", str(lib)], capture_output=True).returncode:
            return None
        chain = ctypes.CDLL(str(lib)).chain
        chain.argtypes, chain.restype = [ctypes.c_uint64], ctypes.c_uint64
        chain(iterations // 10)   # wake the core up from its idle clock
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            chain(iterations)
            best = min(best, time.perf_counter() - t)
    return 8 * iterations / best / 1e9


def nominal_clock_ghz(cpuinfo: str | None = None, lscpu: str | None = None) -> tuple[float | None, str]:
    """The clock lscpu calls its maximum, else /proc/cpuinfo's current "cpu MHz"; and which one."""
    if lscpu is None:
        try:
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        except OSError:
            lscpu = ""
    m = re.search(r"CPU max MHz:\s*([\d.]+)", lscpu or "")
    if m:
        return float(m.group(1)) / 1000, "lscpu max MHz"
    if cpuinfo is None:
        from runtime.cpu import _read_cpuinfo

        cpuinfo = _read_cpuinfo()
    m = re.search(r"cpu MHz\s*:\s*([\d.]+)", cpuinfo)
    return (float(m.group(1)) / 1000, "/proc/cpuinfo cpu MHz") if m else (None, "unknown")


def machine_peak(cores: int | None = None, ghz: float | None = None, flags: set[str] | None = None,
                 vendor: str | None = None, measure: bool = True) -> Peak | None:
    """This machine's peak for ``cores`` threads (default: all); None when no clock can be found."""
    from runtime.cpu import _read_cpuinfo, cpu_flags

    cpuinfo = _read_cpuinfo()
    flags = cpu_flags(cpuinfo) if flags is None else flags
    if vendor is None:
        m = re.search(r"vendor_id\s*:\s*(\S+)", cpuinfo)
        vendor = m.group(1) if m else ""
    source = "given"
    if ghz is None and measure:
        ghz, source = measure_clock_ghz(), "measured with a dependent add chain"
    if ghz is None:
        ghz, source = nominal_clock_ghz(cpuinfo)
    if ghz is None:
        return None
    fp32, int8, why = per_cycle(flags, vendor)
    matrix, matrix_why = matrix_int8_per_cycle(flags)
    return Peak(cores or os.cpu_count() or 1, ghz, source, fp32, int8, why + (f"; {matrix_why}" if matrix else ""),
                matrix)


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic of one text depends on, read from the fp32 ONNX graph."""

    token_macs: int              # multiply-adds per token in the linear layers
    text_macs: int               # multiply-adds per text after pooling (the Dense heads)
    attn_width: int              # query heads x head dim
    windows: tuple[int | None, ...]   # per layer: sliding window (|i - j| < w) or None for full attention


def model_shape(fp32_dir: str | Path) -> ModelShape:
    """The linear layers' sizes from the fp32 graph's MatMul weights, the attention layout from its manifest."""
    import onnx

    from runtime.artifact import read_manifest

    graph = onnx.load(str(Path(fp32_dir) / "model.onnx"), load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    token = text = width = 0
    for node in graph.node:
        if node.op_type == "MatMul" and len(shapes.get(node.input[1], ())) == 2:
            k, n = shapes[node.input[1]]
            if node.input[1].startswith("dense"):   # the sentence-transformers heads act on the pooled vector
                text += k * n
            else:
                token += k * n
                if not width and "q_proj" in node.input[1]:
                    width = n
    arch = read_manifest(fp32_dir).get("architecture") or {}
    w = arch.get("sliding_window_exclusive")
    windows = tuple(w if t == "sliding_attention" else None for t in arch.get("layer_types", ()))
    return ModelShape(token, text, width, windows)


def _pairs(length: int, window: int | None) -> int:
    """Query-key pairs of bidirectional attention over ``length`` tokens, within ``window`` if given."""
    if window is None or window >= length:
        return length * length
    # each token sees itself and up to window-1 tokens on either side
    return length * (2 * window - 1) - window * (window - 1)


def text_flops(shape: ModelShape, length: int) -> int:
    """FLOPs to embed one text of ``length`` tokens: linear layers, attention (scores and mix), heads."""
    attention = sum(2 * shape.attn_width * _pairs(length, w) for w in shape.windows)
    return 2 * (length * shape.token_macs + attention + shape.text_macs)
