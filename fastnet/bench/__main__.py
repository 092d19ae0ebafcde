import sys

from fastnet.bench.command import main

sys.exit(main())
