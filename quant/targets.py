"""Device targets: the choices a quantized artifact bakes in for the CPU class it will run on.

onnxruntime's kernels differ by instruction set, so two choices depend on the device rather than the
recipe: the MatMulNBits accuracy level per bit width (level 4 quantizes activations to int8 blocks
for integer dot products; level 0 computes in float32 and, for 8-bit blocks, decodes the weight on
every call) and the integer path's activation code width (8 bits saturate the u8 x s8 kernel of x86
CPUs without VNNI). ``host`` times and probes the building machine; every other target fixes the
choices from what is known about that class (docs/devices.md has the measurements). A third choice
is the integer path's form for down_proj: a float32 MatMul, or two integer passes where an int8
matrix unit (AMX) makes the integer GEMM about 5x the fp32 one (docs/notes/bench.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.cpu import version_tuple

from .source import QuantInputError


@dataclass(frozen=True)
class Target:
    """A device class and the choices built for it."""

    name: str
    summary: str                          # one line for --help: which devices pick it
    levels: dict[int, int] | None         # MatMulNBits bits -> accuracy level; None: timed on this CPU
    activation_bits: int | None           # integer-path code width; None: from this CPU's flags
    arch: str | None                      # "x86_64", "aarch64", "wasm"; None: this machine's
    cpu_flags: tuple[str, ...] = ()       # flags (as /proc/cpuinfo spells them) the choices assume
    requires: dict[str, str] = field(default_factory=dict)   # package -> minimum version at run time
    two_pass: bool = False                # integer path's down_proj in two int8 passes instead of fp32 (AMX)

    def describe(self) -> dict:
        """The manifest's ``target`` entry."""
        out = {"name": self.name, "summary": self.summary}
        if self.arch:
            out["arch"] = self.arch
        if self.cpu_flags:
            out["cpu_flags"] = list(self.cpu_flags)
        if self.requires:
            out["requires"] = dict(self.requires)
        return out


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("host", "the building machine: accuracy levels timed here, int8 activation width from its flags",
           levels=None, activation_bits=None, arch=None),
    # No VNNI: level 4 is no faster for Q4_0 and costs accuracy; Q8_0 at level 0 decodes every weight
    # on every call (several times slower on single texts), so 8-bit blocks keep level 4.
    Target("x86-avx2", "x86-64 CPUs with AVX2 but no AVX-512 VNNI / AVX-VNNI (older Intel, AMD before Zen 4)",
           levels={4: 0, 8: 4}, activation_bits=7, arch="x86_64", cpu_flags=("avx2",)),
    # VNNI: level 4 for Q4_0 was faster on one VNNI CPU and slower on another, so Q4_0 keeps the exact
    # level 0; 8-bit blocks level 4; 8-bit activation codes are exact with VNNI.
    Target("x86-vnni", "x86-64 CPUs with AVX-512 VNNI or AVX-VNNI (Intel Ice Lake and later, AMD Zen 4 and later)",
           levels={4: 0, 8: 4}, activation_bits=8, arch="x86_64", cpu_flags=("avx2", "avx512_vnni|avx_vnni")),
    # AMX: onnxruntime's integer GEMM runs on the tile unit (4-7x the fp32 GEMM per weight shape), so
    # w8a8's down_proj takes two integer passes instead of fp32; opt-in, not what host picks on such a
    # CPU: it meets w8a8's fidelity minimum by a hair (docs/notes/bench.md). MatMulNBits has no AMX
    # kernel, so the block formats keep x86-vnni's levels.
    Target("x86-amx", "x86-64 CPUs with AMX-INT8 (Intel Xeon Sapphire Rapids and later); w8a8's down_proj on "
           "the integer GEMM too", levels={4: 0, 8: 4}, activation_bits=8, arch="x86_64",
           cpu_flags=("avx2", "avx512_vnni|avx_vnni", "amx_int8"), two_pass=True),
    # Arm: level 4 runs onnxruntime's int8 dot-product (KleidiAI) kernels; Arm's int8 products do not
    # saturate, so 8-bit activation codes are exact; 8-bit MatMulNBits needs onnxruntime >= 1.23 there.
    Target("arm64", "64-bit Arm: phones (Android, iOS), Apple silicon, Graviton, Raspberry Pi 4/5",
           levels={4: 4, 8: 4}, activation_bits=8, arch="aarch64", requires={"onnxruntime": "1.23"}),
    # wasm: MatMulNBits has no quantized kernel (it unpacks the weights on every call, at any level),
    # so the exact level 0; the integer path (w8a8) is the fast form there, and wasm's int8 GEMM does
    # not saturate 8-bit codes (checked at the extreme values, docs/notes/web.md).
    Target("wasm", "browsers (onnxruntime-web, WebAssembly); pick w8a8 there, block formats run slowly in wasm",
           levels={4: 0, 8: 0}, activation_bits=8, arch="wasm"),
)}


def get_target(name: str) -> Target:
    """The target called ``name``; ``QuantInputError`` naming the known ones otherwise."""
    target = TARGETS.get(str(name).strip().lower())
    if target is None:
        raise QuantInputError(f"unknown --target {name!r}; choose one of {', '.join(TARGETS)} "
                              "(`embeddinggemma-quant --help` says which devices each one is for)")
    return target


def check_host_can_build(target: Target) -> None:
    """Refuse a target whose run-time requirement this machine's onnxruntime does not meet: the build's
    self-check runs the artifact here."""
    import onnxruntime

    need = target.requires.get("onnxruntime")
    if need and version_tuple(onnxruntime.__version__) < version_tuple(need):
        raise QuantInputError(f"--target {target.name} needs onnxruntime >= {need} (8-bit MatMulNBits), this "
                              f"machine has {onnxruntime.__version__}: pip install -U 'onnxruntime>={need}'")

