"""``python -m mosaic_relay …`` = the ``mosaic-relay`` command."""

import sys

from mosaic_relay.cli import main

sys.exit(main())
