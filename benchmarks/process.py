"""One measurement in a fresh process: ``benchmarks.worker`` run for a system (our artifacts, torch or a peer)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

#: The repository root, on the worker's PYTHONPATH so a peer's own venv finds ``benchmarks.worker``.
ROOT = Path(__file__).resolve().parents[1]


def call_worker(system: dict, spec: dict, threads: int) -> dict:
    """Run ``benchmarks.worker`` for ``system`` in a fresh process (its own venv's python for a peer)."""
    spec = dict(spec, system=system["system"], path=system["path"], threads=threads, options=system.get("options"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([system.get("python") or sys.executable, "-m", "benchmarks.worker"], input=json.dumps(spec),
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        # a native crash leaves no traceback: name the signal (llama.cpp's AMX path: docs/notes/bench.md)
        how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit code {proc.returncode}")
        raise RuntimeError(f"{system['name']} / {spec.get('workload', spec.get('mode'))} failed ({how}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
