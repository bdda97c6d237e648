"""``python -m dd3g_core.cli ...``: the ``dd3g`` command without the console script."""

import sys

from . import main

sys.exit(main())
