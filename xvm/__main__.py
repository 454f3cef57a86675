"""``python3 -m xvm``: the ``xvm`` command line."""
import sys

from .cli import main

sys.exit(main())
