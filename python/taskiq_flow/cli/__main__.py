"""``python -m taskiq_flow.cli``: the ``taskiq-flow`` command."""

import sys

from taskiq_flow.cli import main

sys.exit(main())
