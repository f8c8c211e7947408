"""Upstream addresses: ``http(s)://host[:port]`` URLs and gRPC ``host:port`` targets.

Core module: imports only the standard library (and the gateway's error vocabulary).

The same parsing serves the file (through the models' validators, which turn
:class:`BadAddress` into an error naming the key) and the command-line flags (through
:func:`parse_http_upstream` and :func:`parse_grpc_target`, which name the flag).
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from eventgw.config.runtime import ApiUpstream
from eventgw.errors import ConfigError

__all__ = [
    "BadAddress",
    "GrpcTarget",
    "HttpUrl",
    "parse_grpc_target",
    "parse_http_upstream",
    "split_grpc_target",
    "split_http_url",
]


class BadAddress(ValueError):
    """An address that does not parse; ``str()`` is the one-line reason."""


class HttpUrl(NamedTuple):
    scheme: str
    host: str
    port: int
    url: str


class GrpcTarget(NamedTuple):
    host: str
    port: int
    tls: bool


def _host_port(text: str, default_port: int | None) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the port may be defaulted."""
    parts = urlsplit("//" + text)
    try:
        port = parts.port
    except ValueError:
        raise BadAddress(f"bad port in {text!r}") from None
    host = parts.hostname
    if not host or parts.path or parts.query or parts.fragment or parts.username:
        raise BadAddress(f"expected host:port, got {text!r}")
    if not host.isascii() and ":" not in host:
        # Sent as IDNA in Host and :authority; a name IDNA cannot encode is no host.
        try:
            host.encode("idna")
        except UnicodeError:
            raise BadAddress(f"not a valid host name in {text!r}") from None
    if port is None:
        if default_port is None:
            raise BadAddress(f"missing port in {text!r}")
        port = default_port
    return host, port


def split_http_url(url: str) -> HttpUrl:
    """``http://host[:port]`` or ``https://...``, with no path beyond ``/`` and no query."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadAddress(f"expected an http:// or https:// URL, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadAddress(f"the URL must not carry a path or query, got {url!r}")
    host, port = _host_port(parts.netloc, 443 if parts.scheme == "https" else 80)
    return HttpUrl(parts.scheme, host, port, url.rstrip("/"))


def split_grpc_target(text: str) -> GrpcTarget:
    """``host:port`` (h2c), ``http://host:port`` (h2c) or ``grpcs://host:port`` (TLS)."""
    tls = False
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("grpc", "grpcs", "http", "https"):
            raise BadAddress(f"expected host:port or grpcs://host:port, got {text!r}")
        tls = scheme in ("grpcs", "https")
        text = rest.rstrip("/")
    host, port = _host_port(text, None)
    return GrpcTarget(host, port, tls)


def _text(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        shown = "nothing" if value is None else f"{type(value).__name__} {value!r}"
        raise ConfigError(key, f"expected a non-empty string, got {shown}")
    return value


def parse_http_upstream(value: object, key: str) -> ApiUpstream:
    """An :class:`ApiUpstream` with default pool settings; errors name ``key``."""
    try:
        scheme, host, port, url = split_http_url(_text(value, key))
    except BadAddress as e:
        raise ConfigError(key, str(e)) from None
    return ApiUpstream(scheme=scheme, host=host, port=port, url=url)


def parse_grpc_target(value: object, key: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a gRPC target; errors name ``key``."""
    try:
        host, port, tls = split_grpc_target(_text(value, key))
    except BadAddress as e:
        raise ConfigError(key, str(e)) from None
    return host, port, tls
