"""``embeddinggemma-mobile``: the ORT-format model matches the ONNX artifact, one tokenizer file, the
manifest covers every file, and bad input gets a one-line error."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mobile.cli import main
from mobile.package import MODEL_FILE, OPERATORS_FILE
from quant.cli import main as quant_main
from runtime import Embedder
from runtime.artifact import MANIFEST_NAME, read_manifest
from tiny_checkpoint import TINY_TEXTS

TOKENIZER_FILES = {"tokenizer.json", "tokenizer.model", "added_tokens.json"}


def _cosines(a: Path, b: Path, texts) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tiny model truncates long texts
        x = Embedder(a, threads=1).encode(texts, prompt_name="query")
        y = Embedder(b, threads=1).encode(texts, prompt_name="query")
    return np.sum(x * y, axis=1)


@pytest.fixture(scope="module")
def tiny_q4_0(tiny_artifact, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mobile-src") / "q4_0"
    assert quant_main(["--in", str(tiny_artifact), "--variant", "q4_0", "--target", "arm64", "--method", "rtn",
                       "--out", str(out), "-q", "--no-check"]) == 0
    return out


def test_mobile_folder_matches_the_artifact(tiny_q4_0, tmp_path):
    out = tmp_path / "mobile"
    assert main(["--in", str(tiny_q4_0), "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([MANIFEST_NAME, MODEL_FILE, OPERATORS_FILE, "tokenizer.json"])   # one tokenizer file
    m = read_manifest(out)
    assert sorted(m["files"]) == sorted(set(files) - {MANIFEST_NAME})
    assert m["model_file"] == MODEL_FILE and m["mobile"]["model_format"] == "ORT" and m["target"]["name"] == "arm64"
    assert m["prompts"] == read_manifest(tiny_q4_0)["prompts"]
    ops = (out / OPERATORS_FILE).read_text()
    assert "com.microsoft;1;" in ops and "MatMulNBits" in ops and str(tmp_path) not in ops
    cos = _cosines(tiny_q4_0, out, TINY_TEXTS)
    assert cos.min() >= 0.99999, cos          # the same graph, optimised ahead of time


def test_inline_added_tokens_split_like_the_file(tmp_path):
    """The mobile manifest carries the sentencepiece added tokens inline (one tokenizer file); they split
    text exactly as the added_tokens.json form does."""
    spm = pytest.importorskip("sentencepiece")
    from runtime.tokenizer import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TINY_TEXTS * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=90,
                                   minloglevel=2)
    added = {"<start_of_turn>": 200, "<end_of_turn>": 201}   # ids past the small vocabulary, as Gemma's are
    (tmp_path / "added.json").write_text(json.dumps(added))
    base = {"max_seq_length": 64, "sentencepiece": {"model_file": "sp.model", "bos_id": 2, "eos_id": 1}}
    from_file = load_tokenizer(tmp_path, {**base, "sentencepiece": {**base["sentencepiece"],
                                                                    "added_tokens_file": "added.json"}})
    inline = load_tokenizer(tmp_path, {**base, "sentencepiece": {**base["sentencepiece"], "added_tokens": added}})
    text = ["hello <start_of_turn>user the quick brown fox<end_of_turn>"]
    assert inline.encode_batch(text) == from_file.encode_batch(text)
    ids = inline.encode_batch(text)[0][0]
    assert ids[0] == 2 and ids[-1] == 1 and 200 in ids and 201 in ids
    with pytest.raises(ValueError, match="ships only the sentencepiece tokenizer"):
        load_tokenizer(tmp_path, base, backend="tokenizers")


def test_mobile_errors(tiny_artifact, tiny_q4_0, tmp_path, capsys):
    assert main(["--in", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --in") and "is not an artifact folder" in err and "\n" not in err
    assert main(["--in", str(tiny_q4_0), "--out", str(tmp_path / "m"), "--tokenizer", "sentencepiece"]) == 2
    assert "ships no sentencepiece model" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["--in", str(tiny_q4_0), "--out", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and list(existing.iterdir()) == []
    assert main(["--in", str(tiny_q4_0), "--out", str(tmp_path / "m1")]) == 0
    assert main(["--in", str(tmp_path / "m1"), "--out", str(tmp_path / "m2")]) == 2
    assert "already a mobile folder" in capsys.readouterr().err


@pytest.mark.real_model
def test_real_q4_0_mobile_folder(rtn_variants, tmp_path):
    """The real q4_0 as a phone app ships it: <= 190 MB, tokenizer.model only, same vectors as the
    ONNX artifact (cos >= 0.99999)."""
    out = tmp_path / "q4_0"
    assert main(["--in", str(rtn_variants["q4_0"]), "--out", str(out)]) == 0
    m = read_manifest(out)
    assert set(m["files"]) & TOKENIZER_FILES == {"tokenizer.model"} and "tokenizer_file" not in m
    assert len(m["sentencepiece"]["added_tokens"]) > 100
    assert sum(f["size"] for f in m["files"].values()) <= 190e6
    emb = Embedder(out)
    assert emb.tokenizer_backend == "sentencepiece"
    texts = ["Which planet is known as the Red Planet?", "def mean(xs): return sum(xs) / len(xs)",
             "La tour Eiffel a été construite en 1889.", "東京は日本の首都です。"]
    assert _cosines(rtn_variants["q4_0"], out, texts).min() >= 0.99999


def test_block_stored_integer_path_needs_fold(tiny_artifact, tmp_path, capsys):
    """w8a8_s4 re-codes its Q4_0 blocks when a session loads, which an ORT-format file would do on every
    call: packaging it asks for --fold, and with --fold the folder holds the int8 codes and matches."""
    src = tmp_path / "w8a8_s4"
    assert quant_main(["--in", str(tiny_artifact), "--variant", "w8a8_s4", "--method", "rtn", "--out", str(src),
                       "-q", "--no-check"]) == 0
    assert main(["--in", str(src), "--out", str(tmp_path / "packed")]) != 0
    assert "re-code them on every call. Pass --fold" in capsys.readouterr().err
    assert not (tmp_path / "packed").exists()
    out = tmp_path / "folded"
    assert main(["--in", str(src), "--out", str(out), "--fold", "--platform", "amd64"]) == 0
    assert read_manifest(out)["mobile"]["constants_folded"] is True
    assert _cosines(src, out, TINY_TEXTS).min() >= 0.9999


def test_mobile_conversion_gets_constant_float32_scales(tiny_q4_0, tmp_path):
    """The artifact stores MatMulNBits' scales in float16 behind a Cast that a session folds at load;
    the mobile conversion runs without constant folding, so the packager widens them first: every
    MatMulNBits reads a float32 initializer again, equal to the stored float16 values, and the model
    computes the same numbers bit for bit."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from mobile.package import _with_wide_matmulnbits_scales

    src = tiny_q4_0 / "model.onnx"
    out = _with_wide_matmulnbits_scales(src, tmp_path / "widened")
    before, after = onnx.load(str(src)), onnx.load(str(out))
    old = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    mm = [n for n in after.graph.node if n.op_type == "MatMulNBits"]
    assert mm and all(new[n.input[2]].dtype == np.float32 for n in mm)
    producers = {o: n for n in before.graph.node for o in n.output}
    for n in mm:
        stored = old[producers[n.input[2]].input[0]]
        assert stored.dtype == np.float16 and np.array_equal(stored.astype(np.float32), new[n.input[2]])
    assert not {n.input[2] for n in mm} & {o for n in after.graph.node for o in n.output}
    assert len(after.graph.node) == len(before.graph.node) - len(mm)   # only those Casts went
    ids = np.array([[2, 10, 20, 30, 1], [2, 40, 1, 0, 0]], np.int64)
    feed = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    so = ort.SessionOptions()
    a = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, feed)
    b = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, feed)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # an artifact without such Casts (older builds) is converted as it is
    assert _with_wide_matmulnbits_scales(out, tmp_path / "again") == out and not (tmp_path / "again").exists()
