"""What an Android or iOS app ships for one variant: the model in onnxruntime's ORT format, the
operator list for a reduced onnxruntime build, one tokenizer file and the manifest.

``embeddinggemma-mobile --in artifacts/q4_0 --out mobile/q4_0`` writes it; docs/devices.md shows
how a Kotlin or Swift app loads it. The folder is itself an artifact: ``runtime.Embedder`` loads it.
"""
