"""A Ray cluster of several nodes on this machine, on loopback: ``ray start --head`` plus one
``ray start --address`` per extra node, each with its own CPU count, its own auth token, stopped by
process group at the end (``ray stop`` would end every Ray process on the machine, other users' too).

Used by the corpus benchmark (the scaling line) and the Ray engine's test.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
#: One token per process: Ray's client caches the first token it reads, so clusters started one
#: after another in one process must share it.
_TOKEN = secrets.token_hex(16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, what: str, limit: float = 180.0) -> None:
    """Poll until ``predicate()``; the limit only turns a hang into an error, it is not a measurement."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.2)


def session_pids(session: int) -> list[int]:
    """Live processes of one session (Ray workers take process groups of their own, not sessions)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == session and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to one ``ray start --block`` process group, then SIGKILL to whatever is left of the
    session it leads (raylet, gcs_server, workers), each by its id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def alive_nodes(address: str) -> int:
    """Nodes of the cluster at ``address`` that are alive (joins as a driver for a moment)."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        return sum(1 for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()


class LocalRayCluster:
    """``with LocalRayCluster([1, 1]) as address:`` two nodes of 1 CPU each on 127.0.0.1.

    Sets the cluster's token (and turns off usage stats) in this process's environment while it runs,
    so drivers started here or by subprocesses inheriting the environment can join. The nodes listen
    on this machine only; a driver given 127.0.0.1 is sent by Ray to the machine's own interface
    address (Ray's multi-node mode has no loopback-only switch), which stays inside the machine.
    """

    def __init__(self, cpus_per_node: list[int], extra_env: dict | None = None, nice: int = 0):
        self.cpus_per_node = list(cpus_per_node)
        self.extra_env = dict(extra_env or {})
        self.nice = nice  # the actors inherit it: a benchmark runs every engine at the same niceness
        self.procs: list[subprocess.Popen] = []
        self.address: str | None = None
        self._saved_env: dict = {}
        self._temp: str | None = None

    def __enter__(self) -> str:
        port = _free_port()
        self._temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN, "RAY_USAGE_STATS_ENABLED": "0", **self.extra_env}
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        logs = Path(self._temp) / "start-logs"
        logs.mkdir()
        self.address = f"127.0.0.1:{port}"
        common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        try:
            for i, cpus in enumerate(self.cpus_per_node):
                where = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self._temp}"] \
                    if i == 0 else [f"--address={self.address}"]
                log = logs / f"node{i}.log"
                with open(log, "wb") as out:
                    self.procs.append(subprocess.Popen(["nice", "-n", str(self.nice), str(RAY), "start", *where,
                                                        f"--num-cpus={cpus}", *common],
                                                       env=dict(os.environ), start_new_session=True, stdout=out,
                                                       stderr=subprocess.STDOUT))
                if i == 0:
                    _wait_for(lambda path=log: b"Ray runtime started" in path.read_bytes(), "the head node")
            _wait_for(lambda: alive_nodes(self.address) == len(self.cpus_per_node), "every node to join")
        except BaseException:
            self.__exit__()
            raise
        return self.address

    @property
    def sessions(self) -> list[int]:
        """Session ids of the nodes' processes (each ``ray start`` leads one)."""
        return [p.pid for p in self.procs]

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        self.procs = []
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
