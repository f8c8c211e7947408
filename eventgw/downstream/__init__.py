"""The front door: the listening ports and the client-facing protocols.

Core module: the package itself imports nothing; each module says its layer.

A connection is accepted (:mod:`.listener`), told HTTP/1.1 from HTTP/2 (:mod:`.sniff`),
and served by :mod:`.http1server` or :mod:`.h2server`; both turn requests into the
:mod:`eventgw.exchange` seam and hand them to a flow's target.  One access-log event
per request (:mod:`.accesslog`).
"""
