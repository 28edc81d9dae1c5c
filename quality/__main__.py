"""``python -m quality``: the same as ``embeddinggemma-quality``."""
import sys

from .cli import main

sys.exit(main())
