"""Build a tiny random Gemma 3 embedding checkpoint in the sentence-transformers layout.

Same architecture as EmbeddingGemma (bidirectional attention, symmetric sliding window, grouped-query
attention, local/global layer pattern, mean pooling, two bias-free Dense heads), but small enough to
export in seconds. Needs torch, transformers, sentence-transformers and tokenizers; no download.
"""
from __future__ import annotations

from pathlib import Path

PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Classification": "task: classification | query: ",
    "Clustering": "task: clustering | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
}

# Varied training text so the byte-level BPE learns real merges.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Which planet is known as the Red Planet? Mars, of course.",
    "task: search result | query: title: none | text: ",
    "def encode(texts): return [t.lower() for t in texts]",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "敏捷的棕色狐狸跳过了懒狗。 日本語のテキストも少し。",
    "Быстрая коричневая лиса перепрыгивает через ленивую собаку.",
    "Emoji 🎉🚀 and numbers 12345 and URLs https://example.com/path?q=1",
]

SLIDING_WINDOW = 16  # serialised value; transformers turns it into |i - j| < 9


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with <pad>=0, <eos>=1, <bos>=2 and BOS/EOS added like Gemma's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> <bos> $B <eos>",
        special_tokens=[("<bos>", 2), ("<eos>", 1)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
    )


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, max_seq_length: int = 64) -> Path:
    """Write a random tiny EmbeddingGemma-like SentenceTransformer to ``out_dir`` and return it."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import Gemma3TextConfig, Gemma3TextModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=max_seq_length,
        sliding_window=SLIDING_WINDOW, layer_types=["sliding_attention", "full_attention"] * 2,
        use_bidirectional_attention=True, query_pre_attn_scalar=32, rms_norm_eps=1e-6,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, use_cache=False,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
    )
    backbone = Gemma3TextModel(config)
    with torch.no_grad():  # random init is tiny; make norms and activations non-trivial
        for name, p in backbone.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.08)
    hf_dir = out_dir / "_hf"
    backbone.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)

    transformer = models.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    pooling = models.Pooling(64, pooling_mode="mean", include_prompt=True)
    dense1 = models.Dense(64, 256, bias=False, activation_function=torch.nn.Identity())
    dense2 = models.Dense(256, 64, bias=False, activation_function=torch.nn.Identity())
    st = SentenceTransformer(
        modules=[transformer, pooling, dense1, dense2, models.Normalize()], prompts=PROMPTS, device="cpu",
    )
    st.save(str(out_dir))
    import shutil
    shutil.rmtree(hf_dir)
    return out_dir


# Varied texts for tiny-model tests: lengths from 1 to past the tiny max length (64), several beyond
# its sliding window, several scripts.
TINY_TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Which planet is known as the Red Planet? " * 3,
    "def encode(texts): return [t.lower() for t in texts]",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Emoji 🎉🚀 and numbers 12345",
    "a",
    "Mars Venus Jupiter Saturn " * 6,
]
