"""Run ``twistd`` with the /events broker client chosen by $EVENTGW_BROKER_CLIENT.

Until the config file has a key for it, this is how the benchmark selects the client:

    EVENTGW_BROKER_CLIENT=h2 python profiling/events/twistd_with_client.py -n --pidfile= \\
        eventgw --config gateway.yaml
"""

from __future__ import annotations

import os
import sys

from eventgw.events import target as events_web

client = os.environ.get("EVENTGW_BROKER_CLIENT", "grpcio")
defaults = events_web.EventsEndpoint.__init__.__kwdefaults__
if defaults is not None and "client" in defaults:  # older trees have grpcio only
    defaults["client"] = client

from twisted.scripts.twistd import run  # noqa: E402

sys.argv[0] = "twistd"
run()
