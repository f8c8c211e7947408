"""The Python peer for the HTTP rows: Twisted's own ``twisted.web.proxy.ReverseProxyResource``.

``/api/...`` is proxied to the HTTP backend, path kept, over TLS (ALPN h2 and
http/1.1, so HTTP/2 works through Twisted's H2 channel) and over cleartext HTTP/1.1.
The access log is on (one line per request to stdout), as it is for the gateway.

One fix on top of the stock resource: it copies every upstream response header to
the client, hop-by-hop ones included.  It asks the upstream for ``Connection: close``
(a fresh upstream connection per request, which stays as shipped), and copying the
upstream's ``Connection: close`` back would make every client reconnect, so the
benchmark would time TLS handshakes instead of proxying.  Dropping the hop-by-hop
response headers, as RFC 9110 section 7.6.1 requires of a proxy, keeps the client's
connection alive.

Usage: twisted_rp.py --tls-port N --clear-port M --upstream-port U --cert PEM --key PEM
"""

# twisted.web.proxy has no type hints.
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# RFC 9110 section 7.6.1: connection-specific fields that a proxy must not forward.
# (Transfer-Encoding stays: ProxyClient relays the upstream's bytes as they come.)
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--clear-port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()

    from OpenSSL import crypto
    from twisted.internet import endpoints, reactor, ssl
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web import proxy, resource, server

    class HopByHopDroppingClient(proxy.ProxyClient):
        def handleHeader(self, key: bytes, value: bytes) -> None:
            if key.lower() not in HOP_BY_HOP:
                super().handleHeader(key, value)

    class HopByHopDroppingClientFactory(proxy.ProxyClientFactory):
        protocol = HopByHopDroppingClient

    class ReverseProxy(proxy.ReverseProxyResource):
        proxyClientFactoryClass = HopByHopDroppingClientFactory

        def getChild(self, path: bytes, request: object) -> ReverseProxy:
            # The stock getChild builds a plain ReverseProxyResource; keep the subclass.
            child = super().getChild(path, request)
            return ReverseProxy(child.host, child.port, child.path, child.reactor)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    root = resource.Resource()
    root.putChild(b"api", ReverseProxy("127.0.0.1", args.upstream_port, b"/api"))
    site = server.Site(root)

    certificate = crypto.load_certificate(crypto.FILETYPE_PEM, args.cert.read_bytes())
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, args.key.read_bytes())
    tls = ssl.CertificateOptions(
        privateKey=key, certificate=certificate, acceptableProtocols=[b"h2", b"http/1.1"]
    )
    endpoints.SSL4ServerEndpoint(reactor, args.tls_port, tls, interface="127.0.0.1").listen(site)
    endpoints.TCP4ServerEndpoint(reactor, args.clear_port, interface="127.0.0.1").listen(site)
    reactor.run()


if __name__ == "__main__":
    main()
