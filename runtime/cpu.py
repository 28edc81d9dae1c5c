"""What this CPU offers for int8 arithmetic.

The quant stage uses it to pick the integer path's activation width; the runtime uses it to refuse an artifact whose
8-bit integer path would saturate on an x86 CPU without VNNI. Standard library only.
"""
from __future__ import annotations

import platform
from pathlib import Path

#: CPU flags (as /proc/cpuinfo spells them) that give fast int8 dot products.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def _read_cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of this machine (empty when they cannot be read)."""
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags and platform.system() == "Darwin" and platform.machine() == "arm64":
        flags.add("asimddp")   # every Apple silicon core has the dot-product extension
    return flags


def has_int8_dot(flags: set[str] | None = None) -> bool:
    """Whether this CPU has fast int8 dot-product instructions (VNNI or Arm dotprod)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in INT8_DOT_FLAGS)


def is_x86(machine: str | None = None) -> bool:
    """Whether this is an x86-64 machine (where u8 x s8 products without VNNI saturate at int16)."""
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "x64", "i686", "i386")


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else platform.processor(), else "unknown").

    Reports print it: the speed and the accuracy level chosen for quantized variants depend on it.
    """
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or "unknown"
