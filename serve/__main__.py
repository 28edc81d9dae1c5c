"""``python -m serve ...`` = ``embeddinggemma serve ...``."""
import sys

from runtime.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
