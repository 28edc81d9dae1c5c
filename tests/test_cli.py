"""``embeddinggemma embed``: outputs round-trip against runtime.Embedder; errors exit 2 with a message."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime import Embedder
from runtime.cli import MODEL_ENV, main

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def emb(tiny_artifact):
    return Embedder(tiny_artifact, threads=1)


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)


class _Stdin:
    """A piped (non-tty) stdin carrying ``data`` bytes, as main() reads it."""

    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self):
        return False


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line]


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_texts_as_arguments_to_jsonl_on_stdout(tiny_artifact, emb, capsys):
    texts = ["Which planet is known as the Red Planet?", "Gas giants", "ünïcödé ✓"]
    code, out, err = _run(["embed", "--model", str(tiny_artifact), "--task", "query", "--dim", "32", *texts], capsys)
    assert code == 0, err
    rows = _jsonl(out)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["text"] for r in rows] == texts
    expected = emb.encode(texts, prompt_name="query", dim=32)
    got = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    assert got.shape == (3, 32)
    assert np.allclose(got, expected, atol=1e-6)


def test_stdin_lines_to_npy_with_env_model(tiny_artifact, emb, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(MODEL_ENV, str(tiny_artifact))
    monkeypatch.setattr(sys, "stdin", _Stdin("first line\r\n\n  \nsecond line\nthird, with a comma\n".encode()))
    out_file = tmp_path / "vectors.npy"
    code, out, err = _run(["embed", "--prompt-name", "document", "--output", str(out_file)], capsys)
    assert code == 0, err
    got = np.load(out_file)
    expected = emb.encode(["first line", "second line", "third, with a comma"], prompt_name="document")
    assert got.dtype == np.float32 and got.shape == (3, 64)
    assert np.allclose(got, expected, atol=1e-6)


def test_an_existing_output_is_refused_before_the_model_loads_and_replaced_with_force(tiny_artifact, emb, tmp_path,
                                                                                       capsys, monkeypatch):
    out_file = tmp_path / "vectors.npy"
    out_file.write_bytes(b"earlier vectors")
    import runtime.cli as cli

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded before the output was checked")

    with monkeypatch.context() as m:
        m.setattr(cli, "_load_embedder", no_load)
        code, out, err = _run(["embed", "--model", str(tiny_artifact), "red planet", "--output", str(out_file)], capsys)
    assert code == 2 and "already exists; choose another --output or pass --force" in err
    assert out_file.read_bytes() == b"earlier vectors"
    # a failure while writing leaves the earlier file and no partial one beside it
    with monkeypatch.context() as m:
        m.setattr(np, "save", lambda *_a, **_k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        code, _, err = _run(["embed", "--model", str(tiny_artifact), "red planet", "--output", str(out_file),
                             "--force"], capsys)
    assert code == 2 and "No space left on device" in err
    assert out_file.read_bytes() == b"earlier vectors" and [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]
    code, _, err = _run(["embed", "--model", str(tiny_artifact), "red planet", "--output", str(out_file), "--force"],
                        capsys)
    assert code == 0, err
    assert np.allclose(np.load(out_file), emb.encode(["red planet"]), atol=1e-6)


def test_json_objects_on_stdin_as_plain_lines_get_a_warning_naming_the_flag(tiny_artifact, emb, monkeypatch, capsys):
    lines = b'{"id": "a", "text": "Mars is red."}\n{"id": "b", "text": "Jupiter is big."}\n'
    monkeypatch.setattr(sys, "stdin", _Stdin(lines))
    code, out, err = _run(["embed", "--model", str(tiny_artifact)], capsys)
    assert code == 0 and "every line of stdin looks like a JSON object" in err and "--input-format jsonl" in err
    assert [r["text"] for r in _jsonl(out)] == lines.decode().splitlines()   # still embedded as given
    monkeypatch.setattr(sys, "stdin", _Stdin(lines))
    code, out, err = _run(["embed", "--model", str(tiny_artifact), "--input-format", "jsonl"], capsys)
    assert code == 0 and "warning" not in err
    got = np.asarray([r["embedding"] for r in _jsonl(out)], dtype=np.float32)
    assert [r["id"] for r in _jsonl(out)] == ["a", "b"]
    assert np.allclose(got, emb.encode(["Mars is red.", "Jupiter is big."]), atol=1e-6)
    monkeypatch.setattr(sys, "stdin", _Stdin(b"{not json}\nplain text\n"))   # ordinary text: no warning
    code, _, err = _run(["embed", "--model", str(tiny_artifact)], capsys)
    assert code == 0 and "warning" not in err


def test_jsonl_file_with_ids_and_titles(tiny_artifact, emb, tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    records = [{"id": "a", "text": "Mars is red.", "title": "Mars"}, {"id": 2, "text": "Venus is hot."},
               {"id": None, "text": "Jupiter is big.", "title": None}]
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    out_file = tmp_path / "out.jsonl"
    code, out, err = _run(["embed", "--model", str(tiny_artifact), "--input", str(src), "--output", str(out_file)], capsys)
    assert code == 0, err
    rows = _jsonl(out_file.read_text(encoding="utf-8"))
    assert [r["id"] for r in rows] == ["a", 2, None] and "text" not in rows[0]
    expected = emb.encode_document([r["text"] for r in records], titles=["Mars", None, None])
    assert np.allclose(np.asarray([r["embedding"] for r in rows], dtype=np.float32), expected, atol=1e-6)


def test_jsonl_on_stdin_by_flag_with_dim_and_no_normalize(tiny_artifact, emb, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", _Stdin(b'{"text": "alpha"}\n{"text": "beta"}\n'))
    code, out, err = _run(["embed", "--model", str(tiny_artifact), "--input-format", "jsonl", "--task", "STS",
                           "--dim", "16", "--no-normalize"], capsys)
    assert code == 0, err
    rows = _jsonl(out)
    assert [r["text"] for r in rows] == ["alpha", "beta"]
    expected = emb.encode(["alpha", "beta"], prompt_name="STS", dim=16, normalize=False)
    assert np.allclose(np.asarray([r["embedding"] for r in rows], dtype=np.float32), expected, atol=1e-6)


def test_plain_file_to_csv_and_npy_on_stdout(tiny_artifact, emb, tmp_path, capsysbinary):
    src = tmp_path / "texts.txt"
    src.write_text("one\ntwo\nthree\nfour\n", encoding="utf-8")
    expected = emb.encode(["one", "two", "three", "four"], prompt_name="Clustering")
    code = main(["embed", "--model", str(tiny_artifact), "-i", str(src), "--task", "Clustering", "--format", "csv"])
    out, err = capsysbinary.readouterr()
    assert code == 0, err
    rows = [line.split(",") for line in out.decode().splitlines()]
    assert len(rows) == 4 and all(len(r) == 64 for r in rows)
    assert np.allclose(np.asarray(rows, dtype=np.float32), expected, atol=1e-6)

    csv_file = tmp_path / "v.csv"
    assert main(["embed", "--model", str(tiny_artifact), "-i", str(src), "--task", "Clustering", "-o", str(csv_file)]) == 0
    assert np.loadtxt(csv_file, delimiter=",", dtype=np.float32).shape == (4, 64)

    code = main(["embed", "--model", str(tiny_artifact), "-i", str(src), "--task", "Clustering", "--format", "npy"])
    out, err = capsysbinary.readouterr()
    assert code == 0, err
    assert np.allclose(np.load(io.BytesIO(out)), expected, atol=1e-6)


def test_long_text_is_truncated_with_a_warning(tiny_artifact, emb, capsys):
    long_text = "word " * 200
    code, out, err = _run(["embed", "--model", str(tiny_artifact), long_text], capsys)
    assert code == 0
    assert "truncated" in err and "--no-truncate" in err
    with pytest.warns(UserWarning):
        expected = emb.encode([long_text])
    assert np.allclose(np.asarray(_jsonl(out)[0]["embedding"], dtype=np.float32), expected[0], atol=1e-6)


@pytest.mark.parametrize("args, stdin, message", [
    (["--model", "{tmp}/missing", "x"], None, "does not exist or is not a folder"),
    (["x"], None, f"no model: pass --model DIR (an artifact folder) or set {MODEL_ENV}"),
    (["--model", "{art}", "--dim", "100", "x"], None, "--dim 100 is not a size of this model; choose one of 64, 32, 16"),
    (["--model", "{art}", "--task", "nope", "x"], None,
     "unknown prompt name 'nope'; this model has: Classification, Clustering, Retrieval-document, Retrieval-query, "
     "STS, document, query"),
    (["--model", "{art}", "--input", "{tmp}/absent.txt"], None, "cannot read --input {tmp}/absent.txt: No such file"),
    (["--model", "{art}", "--input", "{tmp}"], None, "cannot read --input {tmp}: Is a directory"),
    (["--model", "{art}", "--input", "{tmp}/bad.jsonl"], None, "bad.jsonl line 3 has no \"text\" field (keys: body)"),
    (["--model", "{art}", "--input", "{tmp}/broken.jsonl"], None, "broken.jsonl line 2 is not valid JSON"),
    (["--model", "{art}", "--input-format", "jsonl"], b'{"text": 5}\n', "stdin line 1: \"text\" is a number"),
    (["--model", "{art}"], b"\xff\xfe\n", "stdin is not UTF-8 text"),
    (["--model", "{art}"], b"\n \n", "stdin has no texts"),
    (["--model", "{art}", "x", "--output", "{tmp}/out.txt"], None, "cannot tell the output format from"),
    (["--model", "{art}", "x", "--output", "{tmp}/no/such/dir/out.npy"], None, "does not exist"),
    (["--model", "{art}", "--no-truncate", "word " * 200], None,
     "1 text(s) exceed 64 tokens (first: texts[0]); texts are numbered from 0"),
    (["--model", "{art}", "--task", "query", "--input", "{tmp}/titled.jsonl"], None,
     "the input's \"title\" fields: prompt 'query' ('task: search result | query: ') has no 'title: none' slot"),
    (["--model", "{art}", "x", "--input", "{tmp}/titled.jsonl"], None, "give texts as arguments or with --input"),
    (["--model", "{art}", "--task", "nope", "x"], None, "--prompt-name / --task: unknown prompt name 'nope'"),
])
def test_errors_exit_2_with_a_message(tiny_artifact, tmp_path, monkeypatch, capsys, args, stdin, message):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"body": "no text"}\n', encoding="utf-8")
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    (tmp_path / "titled.jsonl").write_text('{"text": "doc", "title": "T"}\n', encoding="utf-8")
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", _Stdin(stdin))
    fill = {"tmp": str(tmp_path), "art": str(tiny_artifact)}
    code, out, err = _run(["embed", *(a.format(**fill) for a in args)], capsys)
    assert code == 2
    assert err.startswith("error: ") and message.format(**fill) in err
    assert "Traceback" not in err and out == ""


def test_argparse_errors_exit_2(capsys):
    assert main(["embed", "--batch-size", "0", "x"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err
    assert main(["embed", "--format", "xml", "x"]) == 2
    assert main([]) == 2


def test_help_has_real_examples(capsys):
    for argv, example in ((["--help"], "embeddinggemma embed --model artifacts/fp32"),
                          (["embed", "--help"], "embeddinggemma embed --model artifacts/fp32 --task query --dim 256"),
                          (["serve", "--help"], "embeddinggemma serve --model gemma=artifacts/fp32")):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "examples:" in out and example in out


def test_serve_command_errors(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist or is not a folder" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "no model" in capsys.readouterr().err


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked in this test", name=name)
sys.meta_path.insert(0, Block())
from runtime.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
print("LOADED", loaded, file=sys.stderr)
sys.exit(code)
"""


def test_cli_process_without_torch_reads_piped_stdin(tiny_artifact, emb):
    blocked = ["torch", "transformers", "onnx", "fastapi", "uvicorn", "tqdm"]
    script = textwrap.dedent(BLOCKER.format(blocked=blocked))
    run = subprocess.run([sys.executable, "-c", script, "embed", "--model", str(tiny_artifact), "--task", "query"],
                         input="red planet\nblue planet\n".encode(), capture_output=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr.decode()
    assert "LOADED []" in run.stderr.decode()
    got = np.asarray([r["embedding"] for r in _jsonl(run.stdout.decode())], dtype=np.float32)
    assert np.allclose(got, emb.encode(["red planet", "blue planet"], prompt_name="query"), atol=1e-6)

    # Without the serve extra, `serve` says how to install it instead of a traceback.
    run = subprocess.run([sys.executable, "-c", script, "serve", "--model", str(tiny_artifact)],
                         capture_output=True, cwd=ROOT)
    assert run.returncode == 2
    err = run.stderr.decode()
    assert "pip install -e '.[serve]' from the root of the embeddinggemma-onnx clone" in err and "Traceback" not in err
