"""``python -m porten`` is ``porten``."""

import sys

from porten.cli import main

sys.exit(main())
