"""``python -m streamqueue.demo`` (``make demo``): see ``streamqueue.demo.run``."""

import sys

from streamqueue.demo.run import main

if __name__ == "__main__":
    sys.exit(main())
