"""``python -m lmeval_trio.cli``: the same as the ``lmeval-trio`` console script."""

import sys

from lmeval_trio.cli import main

sys.exit(main())
