"""`python -m amago_fast ...` is the `amago-fast` command (see amago_fast.cli)."""

import sys

from amago_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
