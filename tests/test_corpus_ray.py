"""``embed-corpus --engine ray`` on a real two-node Ray cluster on loopback (``ray start --head`` and a
second node with ``ray start --address``, 1 CPU each, stopped at the end): its vectors equal the local
engine's byte for byte per id, and a run killed midway resumes to the same result.

Skipped, loudly, where Ray is not installed (pip install -e '.[ray]').
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pyarrow") is None:
    pytest.skip("RAY CLUSTER TEST SKIPPED: ray[data] or pyarrow is not installed; the Ray engine was NOT checked "
                "(pip install -e '.[ray]')", allow_module_level=True)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from test_corpus import passages, read_output  # noqa: E402

from batch import RayOptions, embed_corpus  # noqa: E402
from benchmarks.ray_cluster import LocalRayCluster  # noqa: E402

pytestmark = pytest.mark.ray_cluster

ROOT = Path(__file__).parents[1]
ROWS, ROWS_PER_SHARD = 240, 10


def _wait_for(predicate, what: str, limit: float = 120.0):
    """Poll until ``predicate()`` is true; the limit only turns a hang into a failure, it is not measured."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node on 127.0.0.1, 1 CPU each, with a token of their own; stopped by
    process group at the end (``ray stop --force`` would end every Ray process on the machine)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with LocalRayCluster([1, 1], extra_env={"PYTHONPATH": pythonpath}) as address:
        yield address


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """240 rows in a Parquet and a JSON Lines file, two bad rows among them."""
    root = tmp_path_factory.mktemp("ray-corpus")
    texts = passages(ROWS, seed=11)
    texts[17], texts[200] = None, ""
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(150)], "text": texts[:150]}), root / "a.parquet",
                   row_group_size=32)
    (root / "b.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": texts[i]}) + "\n"
                                          for i in range(150, ROWS)))
    return root


@pytest.fixture(scope="module")
def local_output(tiny_artifact, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    report = embed_corpus(str(corpus), str(out), tiny_artifact, id_column="id", prompt_name="document",
                          rows_per_shard=ROWS_PER_SHARD)
    assert report.balanced and (report.rows_out, report.rows_failed) == (ROWS - 2, 2)
    return out


def test_two_node_cluster_equals_the_local_engine(cluster, tiny_artifact, corpus, local_output, tmp_path):
    out = tmp_path / "ray"
    # 2 actors of 1 CPU on 2 nodes of 1 CPU: one actor per node
    report = embed_corpus(str(corpus), str(out), tiny_artifact, id_column="id", prompt_name="document",
                          rows_per_shard=ROWS_PER_SHARD, engine="ray",
                          ray=RayOptions(address=cluster, actors=2, artifact_transfer="shared"))
    assert report.balanced and (report.rows_in, report.rows_out, report.rows_failed) == (ROWS, ROWS - 2, 2)
    assert report.shards_written == report.shards == 24
    ray_rows, local_rows = read_output(out), read_output(local_output)
    assert len(ray_rows) == ROWS - 2 and ray_rows.keys() == local_rows.keys()
    assert all(ray_rows[k] == local_rows[k] for k in local_rows)  # byte for byte per id
    assert (out / "errors.jsonl").read_text() == (local_output / "errors.jsonl").read_text()


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import batch.ray_engine as engine

    class SlowShardActor(engine.ShardActor):  # defined here, so Ray ships it by value to the workers
        def __call__(self, batch):
            out = super().__call__(batch)
            time.sleep(1.0)  # shards take long enough for the driver to be killed mid-job
            return out

    engine.ShardActor = SlowShardActor
    from batch.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_ray_job_resumes_to_the_local_result(cluster, tiny_artifact, corpus, local_output, tmp_path):
    out = tmp_path / "ray-killed"
    args = [str(corpus), "--output", str(out), "--model", str(tiny_artifact), "--id-column", "id",
            "--prompt-name", "document", "--rows-per-shard", str(ROWS_PER_SHARD), "--engine", "ray",
            "--address", cluster, "--actors", "2", "--artifact-transfer", "ship", "--no-progress"]
    driver = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(list(out.glob("*.parquet"))) >= 2 or driver.poll() is not None, "the first shards")
        assert driver.poll() is None, "the job ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    done_before = len(list(out.glob("*.parquet")))
    assert 2 <= done_before < 24

    report = embed_corpus(str(corpus), str(out), tiny_artifact, id_column="id", prompt_name="document",
                          rows_per_shard=ROWS_PER_SHARD, engine="ray",
                          ray=RayOptions(address=cluster, actors=2, artifact_transfer="ship"))
    assert report.shards_skipped >= done_before and report.shards_written == 24 - report.shards_skipped
    assert report.balanced and (report.rows_out, report.rows_failed) == (ROWS - 2, 2)
    assert read_output(out) == read_output(local_output)
    assert (out / "errors.jsonl").read_text() == (local_output / "errors.jsonl").read_text()
