"""The ``twistd eventgw`` plugin: a single ServiceMaker, everything else imported lazily."""

from twisted.application.service import ServiceMaker

eventgw = ServiceMaker(
    "eventgw",
    "eventgw.tap",
    "One TLS port for HTTP/1.1, HTTP/2 and gRPC in front of a Master API and an Event Broker.",
    "eventgw",
)
