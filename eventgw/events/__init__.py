"""Flow 1: CloudEvents over HTTP (``/events…``) turned into gRPC calls to the Event Broker.

Core module: the package itself imports nothing; each module says its layer.
"""
