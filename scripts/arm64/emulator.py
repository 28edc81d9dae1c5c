"""Run this checkout's Python code as an arm64 process under qemu-user, in the root that
scripts/setup-arm64.sh builds, on a chosen emulated CPU model.

The process is ``nice -n 10 qemu-aarch64-static -cpu MODEL -L ROOT ROOT/usr/bin/python3``: ``-L``
makes the arm64 loader, libraries and Python come from the root (absolute paths that exist there
resolve there, all others on the host), so no binfmt_misc registration, chroot or bind mount is
needed and the code and artifacts are read where they lie. One emulated process runs at a time
(a lock file in the root), because each one needs a /proc/cpuinfo of its own CPU model in the root.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
ROOT_ENV = "EMBEDDINGGEMMA_ARM64_ROOT"
DEFAULT_ROOT = Path.home() / ".cache" / "embeddinggemma-arm64-root"
#: Where setup-arm64.sh installs the aarch64 wheels, relative to the root.
SITE_PACKAGES = "opt/embeddinggemma/site-packages"
#: The check's CPU names -> qemu CPU models. ``max``: every feature qemu 7.2 emulates (dot product,
#: i8mm, bf16, SVE2, SME); ``armv8.0``: a Cortex-A53, plain Armv8.0-A with NEON and no dot product.
CPU_MODELS = {"max": "max", "armv8.0": "cortex-a53"}


class ArmRootError(RuntimeError):
    """The arm64 root or qemu is missing or unusable; the message says how to make it."""


def find_root(root: str | Path | None = None) -> Path:
    """The arm64 root (argument, else $EMBEDDINGGEMMA_ARM64_ROOT, else ~/.cache/...), checked to be complete."""
    path = Path(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()
    fix = f"run scripts/setup-arm64.sh (it builds {path}; set {ROOT_ENV} for another place)"
    if not shutil.which("qemu-aarch64-static"):
        raise ArmRootError(f"qemu-aarch64-static is not installed; {fix}")
    if not (path / ".setup" / "wheels.done").is_file() or not (path / "usr" / "bin" / "python3").exists():
        raise ArmRootError(f"no complete arm64 root at {path}; {fix}")
    return path


class Emulator:
    """One emulated arm64 CPU model over one root: runs ``python -m ...`` there and returns its output."""

    def __init__(self, root: Path, cpu: str, *, nice: int = 10):
        if cpu not in CPU_MODELS:
            raise ValueError(f"unknown CPU {cpu!r}; choose one of {', '.join(CPU_MODELS)}")
        self.root, self.cpu, self.model, self.nice = root, cpu, CPU_MODELS[cpu], nice

    def command(self, module: str, *args: str) -> list[str]:
        """The command line that runs ``python3 -m module args`` in the root on this CPU model."""
        return ["nice", "-n", str(self.nice), "qemu-aarch64-static", "-cpu", self.model, "-L", str(self.root),
                str(self.root / "usr" / "bin" / "python3"), "-s", "-m", module, *args]

    def environment(self) -> dict[str, str]:
        """A clean environment: the root's wheels and this checkout on the path, nothing from the host's Python."""
        keep = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        return dict(keep, LANG="C.UTF-8", PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1",
                    PYTHONPATH=os.pathsep.join([str(self.root / SITE_PACKAGES), str(REPO)]))

    def run(self, module: str, *args: str, capture: bool = False) -> str:
        """Run ``python3 -m module args`` on the emulated CPU (stderr streams through); stdout when ``capture``."""
        proc = subprocess.run(self.command(module, *args), cwd=REPO, env=self.environment(), text=True,
                              stdout=subprocess.PIPE if capture else None)
        if proc.returncode != 0:
            signal = f" (signal {-proc.returncode})" if proc.returncode < 0 else ""
            raise RuntimeError(f"the emulated {self.cpu} ({self.model}) process failed with exit code "
                               f"{proc.returncode}{signal}: {' '.join(self.command(module, *args))}")
        return proc.stdout if capture else ""

    def describe(self) -> dict:
        """What the emulated CPU offers (features, MIDR, /proc/cpuinfo text), from ``scripts.arm64.guest cpu``."""
        return json.loads(self.run("scripts.arm64.guest", "cpu", capture=True))

    @contextlib.contextmanager
    def session(self) -> Iterator[dict]:
        """Hold the root's lock and install this CPU's /proc/cpuinfo in it; yields the CPU description.

        Without a parsable arm64 /proc/cpuinfo the onnxruntime 1.32 wheel crashes on import under
        qemu-user 7.2, which shows the host's x86 one.
        """
        lock_path = self.root / ".setup" / "emulation.lock"
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another emulated run to finish ({lock_path})", file=sys.stderr, flush=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
            info = self.describe()
            (self.root / "proc").mkdir(exist_ok=True)
            (self.root / "proc" / "cpuinfo").write_text(info["cpuinfo"], encoding="utf-8")
            yield info
