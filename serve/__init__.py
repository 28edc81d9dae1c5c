"""OpenAI-compatible embeddings server for EmbeddingGemma artifacts (``pip install -e '.[serve]'`` in a clone).

``serve.app.create_app`` builds the FastAPI app and ``serve.app.run`` runs it with uvicorn;
``embeddinggemma serve --model DIR`` (``serve.cli``) is the command line. Importing this package
alone pulls in no web framework, so the command can report a missing extra.
"""
