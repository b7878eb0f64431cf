"""``python -m streamqueue ...``: the command line (see ``streamqueue.cli``)."""

import sys

from streamqueue.cli import main

sys.exit(main())
