"""``python -m edgeloop.tools.cli``: the edgeloop command."""

import sys

from . import main

sys.exit(main())
