"""``python -m mobile ...`` = ``embeddinggemma-mobile ...``."""
import sys

from mobile.cli import main

sys.exit(main())
