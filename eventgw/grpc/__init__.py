"""Flow 3: gRPC calls relayed frame by frame to the Master API's gRPC server.

Core module: the package itself imports nothing; each module says its layer.
"""
