"""OpenAI-compatible embeddings server for EmbeddingGemma artifacts (``pip install 'embeddinggemma-onnx[serve]'``).

``serve.app.create_app`` builds the FastAPI app, ``serve.app.serve`` runs it with uvicorn, and
``embeddinggemma serve --model DIR`` is the command line. Importing this package alone pulls in no
web framework, so ``runtime.cli`` can check for the extra lazily.
"""
