"""Real google/embeddinggemma-300m: fp32 artifact vs sentence-transformers on varied texts.

Runs only with EMBEDDINGGEMMA_DIR set (see conftest); exports the checkpoint once per session
unless EMBEDDINGGEMMA_FP32_ARTIFACT names an existing export of it.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from runtime import Embedder
from quant.fidelity import DEFAULT_TEXTS
from runtime.artifact import MANIFEST_NAME, sha256_file

pytestmark = pytest.mark.real_model

PARITY_TEXTS = json.loads(DEFAULT_TEXTS.read_text(encoding="utf-8"))   # records: id, lang, kind, text
MIN_COSINE = 0.99999
CARD_QUERY = "Which planet is known as the Red Planet?"
CARD_DOCS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]
CARD_SIMILARITIES = [0.3011, 0.6359, 0.4930, 0.4889]  # the model card's numbers


@pytest.fixture(scope="module")
def emb(real_artifact):
    return Embedder(real_artifact)


def test_corpus_is_as_varied_as_promised(emb):
    langs = {t["lang"] for t in PARITY_TEXTS} - {"en", "code", "emoji", "mixed"}
    lengths = emb.count_tokens([t["text"] for t in PARITY_TEXTS])
    assert len(PARITY_TEXTS) >= 60 and len(langs) >= 5
    assert sum(n > 600 for n in lengths) >= 3 and any(1900 <= n <= 2048 for n in lengths)
    assert min(lengths) <= 3


def test_manifest_records_the_checkpoint(real_artifact, real_checkpoint):
    m = json.loads((real_artifact / MANIFEST_NAME).read_text())
    config = json.loads((real_checkpoint / "config_sentence_transformers.json").read_text())
    assert m["prompts"] == config["prompts"]
    assert m["source"]["weights_sha256"]["model.safetensors"] == sha256_file(real_checkpoint / "model.safetensors")
    assert m["embedding"]["dim"] == 768 and m["embedding"]["matryoshka_dims"] == [768, 512, 256, 128]
    assert m["max_seq_length"] == 2048 and m["architecture"]["sliding_window_exclusive"] == 257


ADVERSARIAL = ["<bos> inside", "a<eos>b", "<<bos>>", "<pad><pad>", "<start_of_turn>user\nhi<end_of_turn>",
               "<unused5>x<unused55>", "<mask>", "[multimodal] hi", "a\u2581\u2581b \u2581 c", "\n\n\n\nx\n", "   ", "",
               "tab\there", "\u00a0nbsp", "\ufb01 ligature", "A\u030a vs \u00c5", "<b>bold</b> <bo", "x" * 5000]


@pytest.mark.parametrize("backend", ["sentencepiece", "tokenizers"])
def test_tokenizer_ids_identical_to_reference(real_artifact, real_st, backend):
    emb = Embedder(real_artifact, tokenizer=backend, verify=False)
    assert emb.tokenizer_backend == backend
    texts = [t["text"] for t in PARITY_TEXTS] + ADVERSARIAL
    for name in (None, "query", "document", "STS"):
        prefix = real_st.prompts[name] if name else ""
        ref = real_st.tokenizer([prefix + t for t in texts], truncation=True, max_length=2048)["input_ids"]
        full = real_st.tokenizer([prefix + t for t in texts])["input_ids"]
        got, cut = emb._tokenizer.encode_batch([prefix + t for t in texts])
        assert got == ref
        assert cut == [i for i, ids in enumerate(full) if len(ids) > 2048] and len(cut) >= 2


def test_sentencepiece_is_the_default_backend(emb):
    assert emb.tokenizer_backend == "sentencepiece"


@pytest.mark.parametrize("prompt_name", ["query", "document"])
def test_parity_with_sentence_transformers(emb, real_st, prompt_name):
    texts = [t["text"] for t in PARITY_TEXTS]
    # Shuffle so every batch mixes lengths; the runtime regroups by length, ST pads per batch.
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)
    shuffled = [texts[i] for i in order]
    with pytest.warns(Warning):  # the two over-2,048-token texts are truncated on both sides
        got = emb.encode(shuffled, prompt_name=prompt_name, batch_size=8)
    ref = real_st.encode(shuffled, prompt_name=prompt_name, batch_size=8, show_progress_bar=False)
    cos = np.sum(got * ref, axis=1)
    worst = int(np.argmin(cos))
    print(f"\n[{prompt_name}] {len(texts)} texts: min cosine {cos.min():.7f} ({PARITY_TEXTS[order[worst]]['id']}), "
          f"mean {cos.mean():.7f}")
    assert cos.min() >= MIN_COSINE


def test_model_card_example(emb):
    sims = emb.similarity(emb.encode_query(CARD_QUERY), emb.encode_document(CARD_DOCS))[0]
    print(f"\nmodel card similarities: {np.round(sims, 4).tolist()}")
    np.testing.assert_allclose(sims, CARD_SIMILARITIES, atol=1e-3)
    assert int(np.argmax(sims)) == 1


def test_matryoshka_dims_keep_ranking(emb):
    for dim in (512, 256, 128):
        q = emb.encode_query(CARD_QUERY, dim=dim)
        d = emb.encode_document(CARD_DOCS, dim=dim)
        assert q.shape == (dim,) and abs(np.linalg.norm(q) - 1) < 1e-5
        assert int(np.argmax(d @ q)) == 1
