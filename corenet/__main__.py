"""``python -m corenet``: the ``corenet`` command."""
import sys

from corenet.cli import main

sys.exit(main())
