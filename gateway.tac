"""eventgw configured in Python: ``twistd -ny gateway.tac``.

The same service as ``twistd eventgw``; here the configuration is built in code
(it could also come from ``eventgw.config.load_config_file``).
"""

from twisted.application import service

from eventgw.config import load_config
from eventgw.service import gateway_service

config = load_config(
    """
listen: {tls: 9001, cleartext: 9080, interface: 127.0.0.1}
master_api:
  http: http://127.0.0.1:8080
  grpc: 127.0.0.1:50051
event_broker:
  grpc: 127.0.0.1:50052
"""
)

application = service.Application("eventgw")
gateway_service(config).setServiceParent(application)
