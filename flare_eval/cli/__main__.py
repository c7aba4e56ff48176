"""``python -m flare_eval.cli`` works like the ``flare-eval`` command."""

import sys

from . import main

sys.exit(main())
