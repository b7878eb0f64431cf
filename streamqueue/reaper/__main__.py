"""``python -m streamqueue.reaper ...`` is ``streamqueue reaper ...``."""

import sys

from streamqueue.cli import main

sys.exit(main(["reaper", *sys.argv[1:]]))
