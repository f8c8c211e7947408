"""Who may call the gateway: credentials, access rules, rate limits, CORS.

Core module: the package holds sans-IO decisions only (each module says which layer it
is in); the gateway (:mod:`eventgw.gateway`) carries them out before a flow's target
sees a request.
"""
