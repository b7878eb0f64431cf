"""``python -m streamqueue.dashboard ...`` is ``streamqueue dashboard ...``."""

import sys

from streamqueue.cli import main

sys.exit(main(["dashboard", *sys.argv[1:]]))
