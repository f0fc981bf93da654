"""``python -m taskiq_flow.bench``: the comparative benchmark suite."""

import sys

from taskiq_flow.bench import main

sys.exit(main())
