"""``python -m attnlab``: the ``attnlab`` command line, for when the console script is not on PATH."""

import sys

from attnlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
