"""``python -m streamqueue.worker ...`` is ``streamqueue worker ...``."""

import sys

from streamqueue.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
