"""runtime.Embedder behaviour on the tiny artifact: shapes, prompts, dims, errors, integrity checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime import ArtifactError, Embedder, TextTooLongError, TruncationWarning
from runtime.artifact import MANIFEST_NAME
from runtime.batching import SPLIT_FREE_PADDING, SPLIT_MIN_ROWS, SPLIT_PADDING, length_batches


@pytest.fixture(scope="module")
def emb(tiny_artifact):
    return Embedder(tiny_artifact, threads=1)


@pytest.fixture
def copy(tiny_artifact, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(tiny_artifact, dst)
    return dst


def test_single_string_gives_vector_list_gives_matrix_in_order(emb):
    texts = ["short", "a much longer text about planets and moons", "mid length text"]
    one = emb.encode(texts[1])
    many = emb.encode(texts)
    assert one.shape == (64,) and one.dtype == np.float32
    assert many.shape == (3, 64) and many.dtype == np.float32
    np.testing.assert_allclose(many[1], one, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-6)
    assert emb.encode(tuple(texts)).shape == (3, 64)


def test_empty_list(emb):
    assert emb.encode([]).shape == (0, 64)
    assert emb.encode([], dim=16).shape == (0, 16)


def test_matryoshka_is_truncate_then_renormalise(emb):
    full = emb.encode(["planets", "moons"], normalize=False)
    for dim in (32, 16):
        small = emb.encode(["planets", "moons"], dim=dim)
        expected = full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
        np.testing.assert_allclose(small, expected, atol=1e-6)


def test_normalize_false_returns_raw_dense_output(emb):
    raw = emb.encode("planets", normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), emb.encode("planets"), atol=1e-6)


def test_prompts_by_name_equal_literal_prefix(emb):
    text = "Which planet is red?"
    np.testing.assert_allclose(emb.encode(text, prompt_name="STS"),
                               emb.encode(text, prompt="task: sentence similarity | query: "), atol=1e-6)
    np.testing.assert_allclose(emb.encode_query(text), emb.encode(text, prompt_name="query"), atol=1e-6)
    assert not np.allclose(emb.encode(text), emb.encode_query(text), atol=1e-3)


def test_encode_document_titles(emb):
    docs = ["Mars is red.", "Venus is hot."]
    np.testing.assert_allclose(emb.encode_document(docs), emb.encode(docs, prompt="title: none | text: "), atol=1e-6)
    titled = emb.encode_document(docs, titles=["Mars", None])
    np.testing.assert_allclose(titled[0], emb.encode(docs[0], prompt="title: Mars | text: "), atol=1e-6)
    np.testing.assert_allclose(titled[1], emb.encode(docs[1], prompt="title: none | text: "), atol=1e-6)
    assert emb.encode_document("Mars is red.", titles="Mars", dim=32).shape == (32,)
    with pytest.raises(ValueError, match="2 titles for 1 texts"):
        emb.encode_document(["x"], titles=["a", "b"])


def test_similarity(emb):
    q = emb.encode_query("red planet")
    d = emb.encode_document(["Mars", "Venus", "Jupiter"])
    sim = emb.similarity(q, d)
    assert sim.shape == (1, 3)
    np.testing.assert_allclose(sim[0], d @ q, atol=1e-6)
    with pytest.raises(ValueError, match="dim 64 and 32"):
        emb.similarity(q, emb.encode("x", dim=32))


def test_truncation_is_reported_or_refused(emb):
    long_text = "planet " * 200
    with pytest.warns(TruncationWarning, match="1 of 2 text.*exceed 64 tokens.*texts\\[1\\]"):
        v = emb.encode(["short", long_text])
    assert np.isfinite(v).all()
    with pytest.raises(TextTooLongError, match="texts\\[1\\]"):
        emb.encode(["short", long_text], truncate=False)
    assert emb.count_tokens([long_text]) == [64]
    full = emb.count_tokens(["short", long_text], truncate=False)
    assert full[0] == emb.count_tokens(["short"])[0] and full[1] > 64
    assert emb.count_tokens([long_text], prompt="task: x | query: ", truncate=False)[0] > full[1]


def test_length_grouping_respects_token_budget(tiny_artifact):
    emb = Embedder(tiny_artifact, max_batch_tokens=128)
    lengths = [64, 3, 40, 64, 10, 64, 5]
    batches = list(length_batches(lengths, max_rows=32, max_tokens=128))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 128
    texts = ["planet " * n for n in (60, 1, 30, 60, 8, 60, 3)]
    np.testing.assert_allclose(emb.encode(texts), Embedder(tiny_artifact).encode(texts), atol=1e-5)


def test_length_grouping_splits_where_padding_grows():
    long_rows, short_rows = [40] * SPLIT_MIN_ROWS, [30] * 5     # 30 < 40 * (1 - SPLIT_PADDING)
    assert 30 < 40 * (1 - SPLIT_PADDING)
    batches = [sorted(b.tolist()) for b in length_batches(long_rows + short_rows, max_rows=64, max_tokens=8192)]
    assert batches == [list(range(SPLIT_MIN_ROWS)), list(range(SPLIT_MIN_ROWS, SPLIT_MIN_ROWS + 5))]
    # Fewer rows than SPLIT_MIN_ROWS stay together; texts within SPLIT_PADDING of the longest too.
    assert len(list(length_batches([40] * (SPLIT_MIN_ROWS - 1) + [30], max_rows=64, max_tokens=8192))) == 1
    assert len(list(length_batches([40] * 20 + [37] * 20, max_rows=64, max_tokens=8192))) == 1
    # ... unless the padding would pass SPLIT_FREE_PADDING tokens: a long document does not pad short queries.
    assert [b.tolist() for b in length_batches([15, 190, 12, 20], max_rows=64, max_tokens=8192)] == [[1], [3, 0, 2]]
    assert 190 - 20 > SPLIT_FREE_PADDING
    # Every index once, padded size within the budget, an over-long text alone.
    lengths = [5, 300, 7, 7, 64, 3000, 12, 9, 250, 6]
    batches = [b.tolist() for b in length_batches(lengths, max_rows=4, max_tokens=512)]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [5] in batches and all(len(b) <= 4 for b in batches)
    assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 512 for b in batches)
    with pytest.raises(ValueError, match="positive"):
        list(length_batches(lengths, max_rows=0, max_tokens=512))


@pytest.mark.parametrize("call, error, message", [
    (lambda e: e.encode(["ok", 3]), TypeError, r"texts\[1\] is int, expected str"),
    (lambda e: e.encode(None), TypeError, "texts must be a str or a list of str"),
    (lambda e: e.encode(b"bytes"), TypeError, "texts must be a str or a list of str"),
    (lambda e: e.encode("x", prompt_name="Nope"), ValueError, "unknown prompt name 'Nope'.*Classification.*query"),
    (lambda e: e.encode("x", dim=100), ValueError, "unsupported dim 100; this model supports 64, 32, 16"),
    (lambda e: e.encode("x", batch_size=0), ValueError, "batch_size must be a positive int"),
    (lambda e: e.encode("x", prompt="a", prompt_name="query"), ValueError, "not both"),
    (lambda e: e.encode_document(["x"], titles=[3]), TypeError, r"titles\[0\] is int"),
    (lambda e: e.encode_query("x", colour="red"), TypeError, "unexpected keyword"),
    (lambda e: e.encode_document("x", prompt_name="query"), TypeError, "multiple values for keyword argument 'prompt_name'"),
])
def test_bad_input_errors(emb, call, error, message):
    with pytest.raises(error, match=message):
        call(emb)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        Embedder(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="has no embedder.json"):
        Embedder(tmp_path)


def test_missing_file_is_detected(copy):
    (copy / "model.onnx.data").unlink()
    with pytest.raises(ArtifactError, match="'model.onnx.data' is missing"):
        Embedder(copy)


def test_corrupted_weights_fail_sha256_unless_skipped(copy):
    data = bytearray((copy / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    (copy / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="fails its sha256 check"):
        Embedder(copy)
    Embedder(copy, verify=False)  # explicit opt-out loads


def test_truncated_file_caught_even_without_hashing(copy):
    path = copy / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated or replaced"):
        Embedder(copy, verify=False)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format_version=99), "format_version 99.*reads only \\[1\\]"),
    (lambda m: m.update(format="something-else"), "is not an embeddinggemma-onnx-artifact manifest"),
    (lambda m: m.pop("prompts"), "lacks required keys \\['prompts'\\]"),
])
def test_manifest_problems(copy, edit, message):
    m = json.loads((copy / MANIFEST_NAME).read_text())
    edit(m)
    (copy / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=message):
        Embedder(copy)


def test_manifest_session_config_is_applied(copy):
    """``onnx.session_config`` entries reach the session, also when the caller brings its own options."""
    import onnxruntime as ort

    m = json.loads((copy / MANIFEST_NAME).read_text())
    m["onnx"]["session_config"] = {"session.disable_quant_qdq": "1"}
    (copy / MANIFEST_NAME).write_text(json.dumps(m))
    got = Embedder(copy, verify=False)._session.get_session_options()
    assert got.get_session_config_entry("session.disable_quant_qdq") == "1"
    own = ort.SessionOptions()
    got = Embedder(copy, verify=False, session_options=own)._session.get_session_options()
    assert got.get_session_config_entry("session.disable_quant_qdq") == "1"


@pytest.mark.parametrize("config", [["session.disable_quant_qdq"], {"session.disable_quant_qdq": 1}, None])
def test_bad_session_config_is_refused(copy, config):
    m = json.loads((copy / MANIFEST_NAME).read_text())
    m["onnx"]["session_config"] = config
    (copy / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="session_config must map strings to strings.*rebuild it"):
        Embedder(copy, verify=False)


def test_manifest_not_json(copy):
    (copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Embedder(copy)


def test_rewritten_manifest_keeps_the_old_one_on_error_and_lists_no_temporary_file(copy, monkeypatch):
    """write_manifest replaces embedder.json in one step: a failed write leaves the old manifest, a good
    one hashes exactly the artifact's files and leaves nothing else in the folder."""
    from runtime import outputs
    from runtime.artifact import read_manifest, write_manifest

    before = (copy / MANIFEST_NAME).read_text()
    manifest = {k: v for k, v in json.loads(before).items() if k != "files"}
    files = sorted(p.name for p in copy.iterdir())

    real_write_text = outputs.Path.write_text

    def fail(self, data, *args, **kwargs):   # the disk fills up half-way through the file
        real_write_text(self, data[:len(data) // 2], *args, **kwargs)
        raise OSError("disk full")
    monkeypatch.setattr(outputs.Path, "write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(copy, manifest)
    monkeypatch.undo()
    assert (copy / MANIFEST_NAME).read_text() == before
    assert sorted(p.name for p in copy.iterdir()) == files

    write_manifest(copy, manifest)
    assert sorted(p.name for p in copy.iterdir()) == files
    assert read_manifest(copy)["files"] == json.loads(before)["files"]
    Embedder(copy)   # verifies every listed file's size and sha256


def test_thread_and_provider_options(tiny_artifact):
    e = Embedder(tiny_artifact, threads=2, providers=["CPUExecutionProvider"], verify=False)
    assert e._session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="threads must be >= 1"):
        Embedder(tiny_artifact, threads=0)


def test_tokenizer_backend_choice(tiny_artifact):
    # The tiny checkpoint has no tokenizer.model, so only tokenizer.json ships.
    assert Embedder(tiny_artifact, verify=False).tokenizer_backend == "tokenizers"
    with pytest.raises(ValueError, match="ships no sentencepiece model"):
        Embedder(tiny_artifact, tokenizer="sentencepiece", verify=False)
    with pytest.raises(ValueError, match="unknown tokenizer backend 'spm'.*auto, sentencepiece, tokenizers"):
        Embedder(tiny_artifact, tokenizer="spm", verify=False)
