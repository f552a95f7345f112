"""``python -m cellos_sink_jetstream``: the ``cellos-jetstream`` command-line tool."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
