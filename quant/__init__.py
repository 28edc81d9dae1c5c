"""Weight quantization: ggml block formats (Q8_0, Q4_0) and their onnxruntime contrib-op encodings."""
