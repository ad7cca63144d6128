"""``accelerate launch -m superdiff.sweep ...`` (or ``python -m superdiff.sweep``): run a sweep."""

import sys

from .cli import main

sys.exit(main())
