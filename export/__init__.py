"""Export stage: EmbeddingGemma checkpoint -> fp32 ONNX artifact (needs torch, transformers, sentence-transformers)."""
