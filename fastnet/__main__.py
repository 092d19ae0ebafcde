"""``python -m fastnet ...``: the ``fastnet`` command without the installed script."""
import sys

from fastnet.cli import main

sys.exit(main())
