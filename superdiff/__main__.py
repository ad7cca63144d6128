"""``python -m superdiff ...``: the ``superdiff`` command where its script is not on PATH (Colab's ``!``)."""

import sys

from .cli import main

sys.exit(main())
