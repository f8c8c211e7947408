"""Connections to the upstreams, shared by the flows: the pooled HTTP/1.1 client
(:mod:`.h1client`, :mod:`.httppool`) and the pooled HTTP/2 client (:mod:`.h2client`,
:mod:`.h2pool`), with the addresses (:mod:`.address`) and the trusted CAs
(:mod:`.trust`) they share.

Core module: the package itself imports nothing; each module says its layer.
"""
