"""``python -m demo.eventbroker --port N``: run the demo Event Broker."""

import sys

from demo.eventbroker.server import main

sys.exit(main())
