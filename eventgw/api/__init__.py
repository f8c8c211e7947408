"""Flow 2: ``/api…`` over HTTP, reverse-proxied to the Master API over HTTP/1.1.

Core module: the package itself imports nothing; each module says its layer.
"""
