"""What this CPU offers, and whether an artifact built for a device class suits it.

The quant stage uses it to pick the integer path's activation width on the host; the runtime uses
``check_artifact`` when it loads a folder: a warning where the artifact was built for another kind of
CPU (it runs, maybe slower), an error only where its vectors would be wrong (8-bit integer-path codes
on an x86 CPU without VNNI) or where the installed onnxruntime is too old for it. Standard library only.
"""
from __future__ import annotations

import platform
import warnings
from pathlib import Path

from .artifact import ArtifactError

#: CPU flags (as /proc/cpuinfo spells them) that give fast int8 dot products.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def _read_cpuinfo() -> str:
    """/proc/cpuinfo, or "" where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


#: Linux arm64 hardware capability bits (asm/hwcap.h), named as /proc/cpuinfo names them.
_ARM64_HWCAP = {0: "fp", 1: "asimd", 7: "crc32", 20: "asimddp", 22: "sve"}
_ARM64_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}
_AT_HWCAP, _AT_HWCAP2 = 16, 26


def _getauxval(kind: int) -> int:
    """The kernel's auxiliary vector entry (0 where it cannot be read)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        return int(libc.getauxval(ctypes.c_ulong(kind)))
    except (OSError, AttributeError):
        return 0


def _arm64_flags() -> set[str]:
    """arm64 features from the kernel's HWCAP words: right also under qemu-user, whose /proc/cpuinfo
    is the host's (docs/notes/arm64.md)."""
    words = ((_ARM64_HWCAP, _getauxval(_AT_HWCAP)), (_ARM64_HWCAP2, _getauxval(_AT_HWCAP2)))
    return {name for bits, word in words for bit, name in bits.items() if word >> bit & 1}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of this machine (empty when they cannot be read)."""
    if cpuinfo is None and platform.system() == "Linux" and machine_arch() == "aarch64":
        flags = _arm64_flags()
        if flags:
            return flags
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


def machine_arch(machine: str | None = None) -> str:
    """This machine's architecture as the quant stage's targets name it: ``x86_64``, ``aarch64`` or as reported."""
    m = (machine or platform.machine()).lower()
    if is_x86(m):
        return "x86_64"
    return "aarch64" if m in ("aarch64", "arm64", "armv8l") else m


def version_tuple(text: str) -> tuple[int, ...]:
    """Numeric release parts of a version string ("1.23.2" -> (1, 23, 2); "1.24.0.dev1" -> (1, 24, 0))."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits or not piece[0].isdigit():
            break
        parts.append(int(digits))
    return tuple(parts)


def check_artifact(path: Path, manifest: dict) -> None:
    """Warn when ``manifest``'s target does not match this CPU, refuse where results would be wrong."""
    _check_requirements(path, manifest)
    _check_integer_path(path, manifest)
    _check_target(path, manifest)


def _check_requirements(path: Path, manifest: dict) -> None:
    need = ((manifest.get("target") or {}).get("requires") or {}).get("onnxruntime")
    if need:
        import onnxruntime

        if version_tuple(onnxruntime.__version__) < version_tuple(need):
            raise ArtifactError(f"{path} was built for {manifest['target'].get('name')!r} and needs onnxruntime >= {need}; "
                                f"this environment has {onnxruntime.__version__}: pip install -U 'onnxruntime>={need}'")


def _check_integer_path(path: Path, manifest: dict) -> None:
    """Refuse an integer-path artifact with 8-bit activation codes on an x86 CPU without VNNI: its
    u8 x s8 kernel saturates int16 pair sums there, which would give wrong vectors silently."""
    int8 = (manifest.get("quantization") or {}).get("int8_path") or {}
    if not int8.get("needs_int8_dot_products") or not is_x86():
        return
    flags = cpu_flags()
    if not flags:
        warnings.warn(f"{path}: cannot read this CPU's flags; the {manifest.get('variant')} artifact is exact only on "
                      "CPUs with VNNI (x86) or on Arm", RuntimeWarning, stacklevel=4)
        return
    if not has_int8_dot(flags):
        raise ArtifactError(
            f"{path} holds the {manifest.get('variant')!r} variant with 8-bit activation codes, which this x86 CPU "
            "(no VNNI) cannot multiply exactly: onnxruntime's u8 x s8 kernel saturates there and the vectors would be "
            "wrong. Rebuild it for this CPU (embeddinggemma-quant ... --target x86-avx2) or use another variant")


def _check_target(path: Path, manifest: dict) -> None:
    """A warning (not an error: the vectors are right) when the artifact was built for another CPU class."""
    target = manifest.get("target") or {}
    arch = target.get("arch")
    if not arch or arch == "wasm":
        return
    here = machine_arch()
    missing = []
    if arch == here:
        flags = cpu_flags()
        missing = [need for need in target.get("cpu_flags", []) if flags and not set(need.split("|")) & flags]
    if arch != here or missing:
        why = f"this machine is {here}" if arch != here else f"this CPU lacks {', '.join(missing)}"
        warnings.warn(f"{path} was built for --target {target.get('name')} ({arch}) but {why}: it computes the same "
                      "vectors, possibly slower; rebuild it with the target of this machine (embeddinggemma-quant "
                      "--help lists them)", RuntimeWarning, stacklevel=4)
