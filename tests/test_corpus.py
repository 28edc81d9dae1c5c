"""``embeddinggemma embed-corpus`` on the local engine with the tiny artifact: every row accounted for
(embedded or in errors.jsonl, once), ids, vectors equal to runtime.Embedder's, the file metadata, bad
rows, resume after a simulated crash and after a real kill, and the --force rules."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="the corpus job needs pyarrow (pip install -e '.[corpus]')")
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from batch import CorpusError, OutputConflictError, embed_corpus  # noqa: E402
from batch.cli import add_command  # noqa: E402
from batch.output_folder import META_KEY  # noqa: E402
from runtime import Embedder  # noqa: E402
from runtime.artifact import MANIFEST_NAME, sha256_file  # noqa: E402
from runtime.cli import run_command  # noqa: E402

ROOT = Path(__file__).parents[1]
WORDS = ("red planet gas giant moon orbit comet star dust ring ocean ice storm probe crater valley wind "
         "night light year cloud metal core field").split()


def passages(n: int, seed: int = 0, lo: int = 1, hi: int = 9) -> list[str]:
    """``n`` random passages of ``lo``..``hi`` words (varied lengths, all within the tiny model's 64 tokens)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))) for _ in range(n)]


def read_output(folder: Path) -> dict:
    """id -> embedding bytes over every shard of an output folder."""
    out = {}
    for f in sorted(folder.glob("*.parquet")):
        t = pq.read_table(f)
        vectors = np.asarray(t.column("embedding").combine_chunks().flatten(), dtype=np.float32)
        vectors = vectors.reshape(t.num_rows, t.schema.field("embedding").type.list_size)
        for i, v in zip(t.column("id").to_pylist(), vectors):
            assert i not in out, f"id {i!r} written twice"
            out[i] = v.tobytes()
    return out


def errors(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "errors.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch):
    from runtime.cli import MODEL_ENV

    monkeypatch.delenv(MODEL_ENV, raising=False)


@pytest.fixture(scope="module")
def emb(tiny_artifact):
    return Embedder(tiny_artifact, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A folder with a Parquet file, a JSON Lines file in a subfolder and a CSV file (150 rows)."""
    root = tmp_path_factory.mktemp("corpus")
    texts = passages(150, seed=1)
    rows = [{"doc": f"d{i:03d}", "body": t, "title": (f"title {i}" if i % 3 == 0 else None)} for i, t in enumerate(texts)]
    pq.write_table(pa.Table.from_pylist(rows[:70]), root / "part-a.parquet", row_group_size=16)
    (root / "more").mkdir()
    (root / "more" / "part-b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[70:120]) + "\n")
    pacsv.write_csv(pa.Table.from_pylist(rows[120:]), root / "part-c.csv")
    (root / "README.txt").write_text("not data")  # another extension: ignored
    (root / "_SUCCESS").write_text("")            # a writer's marker: skipped
    return root, rows


def test_rows_ids_and_vectors_across_formats(tiny_artifact, emb, corpus, tmp_path):
    root, rows = corpus
    out = tmp_path / "out"
    report = embed_corpus(str(root), str(out), tiny_artifact, text_column="body", id_column="doc",
                          title_column="title", prompt_name="document", dim=32, rows_per_shard=32, threads=1)
    assert report.balanced and (report.rows_in, report.rows_out, report.rows_failed) == (150, 150, 0)
    assert report.input_files == 3 and report.shards == 3 + 2 + 1  # 70, 50 and 30 rows in shards of 32
    got = read_output(out)
    assert sorted(got) == [r["doc"] for r in rows]
    expected = emb.encode([r["body"] for r in rows], "document", titles=[r["title"] for r in rows], dim=32)
    for r, e in zip(rows, expected):
        assert np.allclose(np.frombuffer(got[r["doc"]], dtype=np.float32), e, atol=1e-6)
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert names[0] == "more__part-b.jsonl.00000.parquet" and "part-a.parquet.00002.parquet" in names
    job = json.loads((out / "_job.json").read_text())
    assert job["status"] == "complete" and job["report"]["rows_out"] == 150
    assert (out / "errors.jsonl").read_text() == ""
    assert not (out / "_tmp").exists()


def test_metadata_names_the_artifact_and_settings(tiny_artifact, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in passages(10)))
    out = tmp_path / "out"
    embed_corpus(str(src), str(out), tiny_artifact, prompt_name="query", dim=16, normalize=False)
    (shard,) = out.glob("*.parquet")
    schema = pq.read_schema(shard)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 16)
    assert schema.field("id").type == pa.string()
    meta = json.loads(schema.metadata[META_KEY])
    manifest = json.loads((tiny_artifact / MANIFEST_NAME).read_text())
    assert meta["variant"] == manifest["variant"]
    assert meta["manifest_sha256"] == sha256_file(tiny_artifact / MANIFEST_NAME)
    assert meta["settings"]["dim"] == 16 and meta["settings"]["prompt_name"] == "query"
    assert meta["settings"]["normalize"] is False
    assert meta["counts"] == {"rows_in": 10, "rows_out": 10, "rows_failed": 0, "rows_truncated": 0}
    assert meta["shard"]["start"] == 0 and meta["shard"]["stop"] == 10
    # default ids: <file>:<row>
    assert pq.read_table(shard).column("id").to_pylist() == [f"in.jsonl:{i}" for i in range(10)]


def test_bad_rows_go_to_the_errors_file_and_never_stop_the_job(tiny_artifact, emb, tmp_path):
    long_text = " ".join(["word"] * 400)  # far past the tiny model's 64 tokens
    good = passages(6, seed=3)
    lines = [json.dumps({"id": "g0", "text": good[0]}),
             json.dumps({"id": "null", "text": None}),
             json.dumps({"id": "missing"}),
             json.dumps({"id": "empty", "text": ""}),
             json.dumps({"id": "blank", "text": "   \t"}),
             json.dumps({"id": "number", "text": 42}),
             json.dumps({"id": "list", "text": ["a", "b"]}),
             '{"id": "broken", "text": ',
             json.dumps({"id": "badtitle", "text": good[1], "title": 7}),
             json.dumps({"id": "surrogate", "text": "half \ud800 a pair"}),
             json.dumps({"id": None, "text": good[2]}),
             json.dumps({"id": "long", "text": long_text}),
             json.dumps({"id": "g1", "text": good[3]}),
             "", "   ",  # blank lines are not rows
             json.dumps({"id": "g2", "text": good[4], "title": "ok"})]
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "strict"
    report = embed_corpus(str(src), str(out), tiny_artifact, id_column="id", title_column="title",
                          truncate=False, rows_per_shard=5)
    assert report.balanced and (report.rows_in, report.rows_out, report.rows_failed) == (14, 3, 11)
    by_row = {e["row"]: e for e in errors(out)}
    assert {row: e["reason"] for row, e in by_row.items() if row != 7} == {
        1: "text is null or missing", 2: "text is null or missing", 3: "text is empty", 4: "text is empty",
        5: "text is int, expected a string", 6: "text is list, expected a string",
        8: "title is int, expected a string or null", 9: "text is not valid Unicode (an unpaired surrogate)",
        10: "id is null or missing", 11: "text has more than the model's 64 tokens (--no-truncate)"}
    assert by_row[7]["reason"].startswith("record is not a JSON object") and by_row[7]["id"] is None
    assert [by_row[r]["id"] for r in (1, 2, 5, 11)] == ["null", "missing", "number", "long"]
    assert all(e["source"] == str(src) for e in errors(out))
    assert list(by_row) == sorted(by_row)
    got = read_output(out)
    assert sorted(got) == ["g0", "g1", "g2"]
    expected = emb.encode([good[4]], "document", titles=["ok"])[0]
    assert np.allclose(np.frombuffer(got["g2"], dtype=np.float32), expected, atol=1e-6)

    # truncating (the default) embeds the long text and counts it
    report = embed_corpus(str(src), str(tmp_path / "lenient"), tiny_artifact, id_column="id",
                          title_column="title", rows_per_shard=5)
    assert (report.rows_out, report.rows_failed, report.rows_truncated) == (4, 10, 1)


def test_rerun_skips_finished_shards_and_rewrites_nothing(tiny_artifact, corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "out"
    first = embed_corpus(str(root), str(out), tiny_artifact, text_column="body", id_column="doc", rows_per_shard=40)
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.parquet")}
    second = embed_corpus(str(root), str(out), tiny_artifact, text_column="body", id_column="doc", rows_per_shard=40)
    assert (second.shards_written, second.shards_skipped, second.rows_this_run) == (0, first.shards, 0)
    assert second.balanced and second.rows_out == first.rows_out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.parquet")} == stamps


def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_artifact, corpus, tmp_path, monkeypatch):
    root, _ = corpus
    kwargs = dict(text_column="body", id_column="doc", title_column="title", rows_per_shard=20)
    whole = tmp_path / "whole"
    embed_corpus(str(root), str(whole), tiny_artifact, **kwargs)

    from batch.output_folder import OutputFolder

    real_write = OutputFolder.write_shard
    calls = []

    def crash_on_third(self, spec, result, settings, written_by):
        calls.append(spec.name)
        if len(calls) == 3:
            # half a file left where an interrupted writer leaves it, then the crash
            self.fs.create_dir(self.path("_tmp"), recursive=True)
            with self.fs.open_output_stream(self.path("_tmp", f"{spec.name}.parquet.dead")) as f:
                f.write(b"PAR1 half")
            raise KeyboardInterrupt
        return real_write(self, spec, result, settings, written_by)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(OutputFolder, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(str(root), str(resumed), tiny_artifact, **kwargs)
    monkeypatch.setattr(OutputFolder, "write_shard", real_write)
    assert len(list(resumed.glob("*.parquet"))) == 2 and (resumed / "_tmp").exists()
    assert json.loads((resumed / "_job.json").read_text())["status"] == "running"

    report = embed_corpus(str(root), str(resumed), tiny_artifact, **kwargs)
    assert report.shards_skipped == 2 and report.shards_written == report.shards - 2
    assert report.balanced and report.rows_out == 150
    assert not (resumed / "_tmp").exists()
    assert read_output(resumed) == read_output(whole)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import batch.local_engine as engine
    real = engine.process_shard
    def slow(*args, **kwargs):  # a shard takes long enough to be killed in the middle of the job
        out = real(*args, **kwargs)
        time.sleep(0.5)
        return out
    engine.process_shard = slow
    from batch.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_job_resumes_to_the_same_result(tiny_artifact, tmp_path):
    src = tmp_path / "in.parquet"
    texts = passages(120, seed=5)
    pq.write_table(pa.table({"text": texts, "id": list(range(120))}), src)
    args = [str(src), "--output", "", "--model", str(tiny_artifact), "--id-column", "id", "--rows-per-shard", "10",
            "--no-progress"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _cli(args[:2] + [str(whole)] + args[3:]) == 0

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args[:2], str(killed), *args[3:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # turns a hang into a failure; not a measurement
        while len(list(killed.glob("*.parquet"))) < 3:
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "the job wrote no shards"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = len(list(killed.glob("*.parquet")))
    assert 3 <= done_before < 12
    assert _cli(args[:2] + [str(killed)] + args[3:]) == 0
    job = json.loads((killed / "_job.json").read_text())["report"]
    assert job["shards_skipped"] == done_before and job["rows_out"] == 120 and job["rows_failed"] == 0
    assert read_output(killed) == read_output(whole)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="embeddinggemma")
    add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["embed-corpus", *argv])
    return run_command(args.func, args)


def test_cli_summary_and_errors(tiny_artifact, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,first text\n2,\n3,third text\n")
    out = tmp_path / "out"
    assert _cli([str(src), "-o", str(out), "--model", str(tiny_artifact), "--id-column", "id", "--dim", "16"]) == 0
    err = capsys.readouterr().err
    assert "rows in 3 = embedded 2 + bad 1: ok" in err and "errors.jsonl" in err
    assert [e["id"] for e in errors(out)] == [2]

    # another dim into the same folder: refused, then replaced with --force
    assert _cli([str(src), "-o", str(out), "--model", str(tiny_artifact), "--id-column", "id"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "dim: 16 in the output, 64 now" in err and "--force" in err
    assert _cli([str(src), "-o", str(out), "--model", str(tiny_artifact), "--id-column", "id", "--force"]) == 0
    assert pq.read_schema(next(out.glob("*.parquet"))).field("embedding").type == pa.list_(pa.float32(), 64)

    cases = [
        ([str(src), "-o", str(tmp_path / "x"), "--model", str(tiny_artifact), "--text-column", "body"],
         "has no column 'body'"),
        ([str(src), "-o", str(tmp_path / "x"), "--model", str(tiny_artifact), "--dim", "48"],
         "--dim 48 is not a size of this model; choose one of 64, 32, 16"),
        ([str(src), "-o", str(tmp_path / "x"), "--model", str(tiny_artifact), "--prompt-name", "nope"],
         "unknown prompt name 'nope'"),
        ([str(src), "-o", str(tmp_path / "x"), "--model", str(tiny_artifact), "--prompt-name", "query",
          "--title-column", "text"], "title slot"),
        ([str(tmp_path / "nowhere"), "-o", str(tmp_path / "x"), "--model", str(tiny_artifact)], "does not exist"),
        ([str(src), "-o", str(tmp_path / "x"), "--model", str(tiny_artifact), "--variant", "q4_0"],
         "not 'q4_0'"),
        ([str(src), "-o", str(tmp_path / "x"), "--model", str(tiny_artifact), "--address", "auto"],
         "--address and --actors are for --engine ray"),
        ([str(src), "-o", str(tmp_path / "x")], "no model"),
    ]
    for argv, message in cases:
        assert _cli(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_a_foreign_or_changed_output_is_not_overwritten(tiny_artifact, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in passages(8)))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="not empty and holds no embed-corpus job"):
        embed_corpus(str(src), str(foreign), tiny_artifact)
    embed_corpus(str(src), str(foreign), tiny_artifact, force=True)
    assert (foreign / "notes.txt").read_text() == "mine"  # --force removes only what a job wrote

    out = tmp_path / "out"
    embed_corpus(str(src), str(out), tiny_artifact)
    src.write_text(src.read_text() + json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(OutputConflictError, match="other settings or input"):
        embed_corpus(str(src), str(out), tiny_artifact)
    assert embed_corpus(str(src), str(out), tiny_artifact, force=True).rows_out == 9

    # a shard whose input is gone would double-count in a reader of the folder: refused
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"text": "another"}) + "\n")
    both = tmp_path / "both"
    embed_corpus([str(src), str(second)], str(both), tiny_artifact)
    with pytest.raises(OutputConflictError, match="1 shard\\(s\\) this job does not plan"):
        embed_corpus(str(src), str(both), tiny_artifact)


def test_fsspec_uris_in_and_out(tiny_artifact, emb, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    texts = passages(12, seed=7)
    with mem.open("/corpus-in/a.parquet", "wb") as fh:
        pq.write_table(pa.table({"text": texts}), fh)
    report = embed_corpus("memory://corpus-in", "memory://corpus-out", tiny_artifact, prompt_name="STS")
    assert report.balanced and report.rows_out == 12
    with mem.open("/corpus-out/a.parquet.00000.parquet", "rb") as fh:
        table = pq.read_table(fh)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(vectors, emb.encode(texts, "STS"), atol=1e-6)
    assert mem.exists("/corpus-out/_job.json") and not mem.exists("/corpus-out/_tmp")
    mem.rm("/corpus-in", recursive=True)
    mem.rm("/corpus-out", recursive=True)


def test_ray_engine_without_ray_says_how_to_install_it(tiny_artifact, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "a text"}) + "\n")
    assert _cli([str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_artifact), "--engine", "ray"]) == 2
    assert "pip install -e '.[ray]' from the root" in capsys.readouterr().err
    with pytest.raises(CorpusError, match=r"pip install -e .\.\[ray\]. from the root"):
        embed_corpus(str(src), str(tmp_path / "out2"), tiny_artifact, engine="ray")


def test_the_runtime_install_does_not_pull_pyarrow_or_ray():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime_deps = " ".join(project["dependencies"]).lower()
    assert "ray" not in runtime_deps and "pyarrow" not in runtime_deps
    extras = project["optional-dependencies"]
    assert any(d.startswith("ray[data]") for d in extras["ray"]) and any(d.startswith("pyarrow") for d in extras["corpus"])
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry["embeddinggemma.commands"]["embed-corpus"] == "batch.cli:add_command"
