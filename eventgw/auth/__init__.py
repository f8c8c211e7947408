"""Who is calling: the credentials the gateway checks before a flow runs.

JWT bearer tokens: :mod:`~eventgw.auth.jwt` (the sans-IO key sets, token checks and the
cache of verified tokens) and :mod:`~eventgw.auth.jwks` (where each provider's keys come
from: a file read at start, or an ``https://`` URL fetched and refreshed).

Core module: the package itself imports nothing; each module says its layer.
"""
