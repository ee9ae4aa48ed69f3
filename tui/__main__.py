"""`python -m tui --head HOST:PORT`: the same as `farm tui`."""

from __future__ import annotations

import sys

from farm.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["tui", *sys.argv[1:]]))
