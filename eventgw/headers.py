# -*- test-case-name: tests.test_headers -*-
"""Header rules for the ``/api`` reverse proxy: what crosses the gateway and what is added.

Core module: imports only the standard library.  It must not import ``twisted``,
``grpc``, ``txaio`` or ``socket``, and never reads the clock.

Both directions drop the hop-by-hop headers of RFC 9110 section 7.6.1 (the fixed list
below plus every header named in ``Connection``).  Towards the upstream the request also
loses the headers the HTTP/1.1 client codec writes itself (``host`` and the body
framing) and ``expect`` (the gateway answers ``100-continue`` itself, so the upstream
must never wait for it), and gains ``X-Forwarded-For`` (the client's chain plus the
peer), ``X-Forwarded-Host`` (the original ``Host``/``:authority``) and
``X-Forwarded-Proto``.  Every other header -- trace headers (``traceparent``,
``tracestate``, ``x-request-id``) included -- keeps its position, value and repeats.

Header lists are ``list[tuple[bytes, bytes]]`` with lower-case names (the seam's
convention, :mod:`eventgw.exchange`).  Each function makes one pass over the list and
never mutates its input.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "HOP_BY_HOP",
    "connection_tokens",
    "request_headers_for_upstream",
    "response_headers_for_downstream",
]

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1, plus the pre-standard ``keep-alive`` and ``proxy-connection``
# that clients still send; ``proxy-authenticate``/``proxy-authorization`` belong to the
# hop that asked for them (RFC 9110 section 11.7), not to the upstream.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Connection-specific fields (RFC 9113 section 8.2.2): never sent in HTTP/2.  ``te`` is
# not here: HTTP/2 allows it with the single value ``trailers``.
CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

# Request headers that never go upstream as the client sent them.  ``host`` and
# ``content-length`` are written by the client codec (``h1client``) from the upstream's
# authority and the body framing; ``expect`` is handled by the gateway itself; the
# ``x-forwarded-*`` headers are rebuilt below (a client must not choose the host or
# scheme the upstream believes in).
_REQUEST_DROP: Final = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
}

# Connection tokens that only control the connection and name no header worth a
# second pass.
_PLAIN_TOKENS: Final = frozenset({b"", b"close", b"keep-alive"})
# The values nearly every client and server send, answered without splitting.
_PLAIN_VALUES: Final = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names listed in one ``Connection`` value, lower-case, minus the
    connection options (``close``, ``keep-alive``) that name no header."""
    if value in _PLAIN_VALUES:
        return set()
    tokens = {token.strip(b" \t") for token in value.lower().split(b",")}
    return tokens - _PLAIN_TOKENS


def request_headers_for_upstream(
    headers: Headers,
    *,
    peer: str,
    authority: bytes,
    scheme: bytes,
) -> Headers:
    """The headers to forward upstream for a client's request.

    :param peer: the client's address; appended to any ``X-Forwarded-For`` chain.
    :param authority: the client's ``Host``/``:authority``, sent as ``X-Forwarded-Host``
        (omitted when empty).
    :param scheme: the scheme the client used, sent as ``X-Forwarded-Proto``.
    """
    out: Headers = []
    append = out.append
    named: set[bytes] | None = None
    chain: list[bytes] | None = None
    drop = _REQUEST_DROP
    for item in headers:
        name = item[0]
        if name in drop:
            if name == b"connection":
                tokens = connection_tokens(item[1])
                if tokens:
                    named = tokens if named is None else named | tokens
            elif name == b"x-forwarded-for":
                value = item[1].strip(b" \t")
                if value:
                    if chain is None:
                        chain = [value]
                    else:
                        chain.append(value)
            continue
        append(item)
    if named is not None:
        # Rare: the client named extra hop-by-hop headers (RFC 9110 section 7.6.1).
        out = [item for item in out if item[0] not in named]
        if chain is not None and b"x-forwarded-for" in named:
            chain = None
    address = peer.encode("ascii", "replace")
    if chain is None:
        out.append((b"x-forwarded-for", address))
    else:
        chain.append(address)
        out.append((b"x-forwarded-for", b", ".join(chain)))
    if authority:
        out.append((b"x-forwarded-host", authority))
    out.append((b"x-forwarded-proto", scheme))
    return out


def response_headers_for_downstream(headers: Headers) -> Headers:
    """The upstream's response headers without hop-by-hop ones.

    ``content-length`` stays: the downstream protocol frames the body by it (and keeps
    it on ``HEAD``/``304`` responses, where it describes the representation).
    """
    out: Headers = []
    append = out.append
    named: set[bytes] | None = None
    hop = HOP_BY_HOP
    for item in headers:
        name = item[0]
        if name in hop:
            if name == b"connection":
                tokens = connection_tokens(item[1])
                if tokens:
                    named = tokens if named is None else named | tokens
            continue
        append(item)
    if named is not None:
        out = [item for item in out if item[0] not in named]
    return out
