"""``python -m nrd_rsp.data.toy``: see :mod:`nrd_rsp.data.toy.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
