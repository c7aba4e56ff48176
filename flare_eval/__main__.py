"""``python -m flare_eval`` works like the ``flare-eval`` command."""

import sys

from .cli import command

if __name__ == "__main__":
    sys.exit(command())
