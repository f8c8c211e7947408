"""Who may call the gateway: credentials, access rules, rate limits, CORS.

The access guard (:mod:`~eventgw.auth.guard`: API keys, the client certificate's
identity from :mod:`~eventgw.auth.identity`, bearer tokens, the access rules and the
headers forwarded), rate limits (:mod:`~eventgw.auth.ratelimit`), CORS
(:mod:`~eventgw.auth.cors`); JWT bearer tokens: :mod:`~eventgw.auth.jwt` (the sans-IO
key sets, token checks and the cache of verified tokens) and :mod:`~eventgw.auth.jwks`
(where each provider's keys come from: a file read at start, or an ``https://`` URL
fetched and refreshed).  The gateway (:mod:`eventgw.gateway`) runs them before a flow's
target sees a request.

Core module: the package itself imports nothing; each module says its layer.
"""
