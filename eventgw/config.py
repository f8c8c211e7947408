# -*- test-case-name: tests.test_config -*-
"""The configuration: YAML text in, a frozen :class:`GatewayConfig` out.

Core module: imports the standard library and PyYAML only.  It does not touch files
other than through :func:`load_config_file`, and never binds or connects: whether a
port is free or a certificate readable is found out by the shell at start, which
reports it with the same one-line :class:`~eventgw.errors.ConfigError`.

Every key of DESIGN.md keeps its meaning; keys below it are extensions with defaults.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from eventgw.errors import ConfigError

__all__ = [
    "MIN_EVENT_SIZE",
    "ApiUpstream",
    "BrokerUpstream",
    "GatewayConfig",
    "GrpcUpstream",
    "Limits",
    "ListenConfig",
    "TlsConfig",
    "load_config",
    "load_config_file",
]

# The Event Broker clients ``event_broker.client`` may name.
BROKER_CLIENTS: Final = ("grpcio", "h2")

# The CloudEvents HTTP binding: intermediaries must forward events of 64 KiB.
MIN_EVENT_SIZE: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ListenConfig:
    tls: int = 9001
    cleartext: int | None = None
    interface: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``cert``/``key`` paths, or both ``None`` for a generated development certificate."""

    cert: str | None = None
    key: str | None = None
    # Where the development certificate is written when none is configured.
    dev_cert_dir: str = "./run/dev-cert"


@dataclass(frozen=True, slots=True)
class ApiUpstream:
    """``master_api.http``: where ``/api`` is proxied."""

    scheme: str
    host: str
    port: int
    url: str
    ca_file: str | None = None
    connect_timeout: float = 5.0
    response_timeout: float = 30.0
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class GrpcUpstream:
    """``master_api.grpc``: where allowed gRPC calls are relayed."""

    host: str
    port: int
    tls: bool
    address: str
    ca_file: str | None = None
    connect_timeout: float = 5.0
    max_connections: int = 4
    keepalive_interval: float = 30.0


@dataclass(frozen=True, slots=True)
class BrokerUpstream:
    """``event_broker.grpc``: where ``/events`` calls go."""

    target: str
    tls: bool
    ca_file: str | None = None
    deadline: float = 5.0
    # "grpcio" (DESIGN.md's client) or "h2" (unary calls on the gateway's own HTTP/2
    # upstream pool, all on the reactor thread).
    client: str = "grpcio"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a client may make the gateway hold (``limits:``)."""

    max_request_body: int = 64 * 1024 * 1024
    max_event_size: int = 1024 * 1024
    max_header_bytes: int = 32 * 1024
    max_concurrent_streams: int = 100
    idle_timeout: float = 120.0
    header_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    master_api_http: ApiUpstream | None = None
    master_api_grpc: GrpcUpstream | None = None
    event_broker: BrokerUpstream | None = None
    grpc_allow: tuple[str, ...] = ("/",)
    grpc_deny: tuple[str, ...] = ("/eventbroker.",)
    limits: Limits = field(default_factory=Limits)
    access_log: bool = True
    workers: int = 1
    source: str = "<defaults>"

    def with_overrides(self, **changes: Any) -> GatewayConfig:
        return replace(self, **changes)


# --- validation helpers: each names the full key path on failure -------------------


def _mapping(value: object, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {_kind(value)}")
    for name in value:
        if not isinstance(name, str):
            raise ConfigError(key, f"keys must be strings, got {name!r}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _check_keys(section: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for name in section:
        if name not in allowed:
            where = f"{prefix}.{name}" if prefix else name
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(allowed))})")


def _port(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(key, f"expected a port number 0-65535, got {_kind(value)}")
    return value


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"expected a positive integer, got {_kind(value)}")
    return value


def _seconds(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(key, f"expected a positive number of seconds, got {_kind(value)}")
    return float(value)


def _string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {_kind(value)}")
    return value


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_kind(value)}")
    return value


def _prefixes(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of method prefixes, got {_kind(value)}")
    result = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.startswith("/"):
            raise ConfigError(
                f"{key}[{index}]", f"expected a prefix starting with '/', got {_kind(item)}"
            )
        result.append(item)
    return tuple(result)


def _interface(value: object, key: str) -> str:
    text = _string(value, key)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(key, f"expected an IP address, got {text!r}") from None
    return text


def _host_port(text: str, key: str, default_port: int | None) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; the port may be defaulted."""
    parts = urlsplit("//" + text)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(key, f"bad port in {text!r}") from None
    host = parts.hostname
    if not host or parts.path or parts.query or parts.fragment or parts.username:
        raise ConfigError(key, f"expected host:port, got {text!r}")
    if port is None:
        if default_port is None:
            raise ConfigError(key, f"missing port in {text!r}")
        port = default_port
    return host, port


def parse_http_upstream(value: object, key: str) -> ApiUpstream:
    url = _string(value, key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(key, f"expected an http:// or https:// URL, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(key, f"the URL must not carry a path or query, got {url!r}")
    host, port = _host_port(parts.netloc, key, 443 if parts.scheme == "https" else 80)
    return ApiUpstream(scheme=parts.scheme, host=host, port=port, url=url.rstrip("/"))


def parse_grpc_target(value: object, key: str) -> tuple[str, int, bool]:
    """``host:port`` (h2c), ``http://host:port`` (h2c) or ``grpcs://host:port`` (TLS)."""
    text = _string(value, key)
    tls = False
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("grpc", "grpcs", "http", "https"):
            raise ConfigError(key, f"expected host:port or grpcs://host:port, got {text!r}")
        tls = scheme in ("grpcs", "https")
        text = rest.rstrip("/")
    host, port = _host_port(text, key, None)
    return host, port, tls


_TOP: Final = {
    "listen", "tls", "master_api", "event_broker", "grpc", "limits", "log", "workers",
}


def load_config(text: str, source: str = "<string>") -> GatewayConfig:
    """Parse and validate YAML text; raise :class:`ConfigError` naming the bad key."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(where, f"invalid YAML: {problem}") from None
    top = _mapping(raw, source)
    _check_keys(top, _TOP, "")

    listen_raw = _mapping(top.get("listen"), "listen")
    _check_keys(listen_raw, {"tls", "cleartext", "interface"}, "listen")
    listen = ListenConfig(
        tls=_port(listen_raw.get("tls", 9001), "listen.tls"),
        cleartext=(
            None
            if listen_raw.get("cleartext") is None
            else _port(listen_raw["cleartext"], "listen.cleartext")
        ),
        interface=_interface(listen_raw.get("interface", "0.0.0.0"), "listen.interface"),
    )

    tls_raw = _mapping(top.get("tls"), "tls")
    _check_keys(tls_raw, {"cert", "key", "dev_cert_dir"}, "tls")
    cert = None if tls_raw.get("cert") is None else _string(tls_raw["cert"], "tls.cert")
    key = None if tls_raw.get("key") is None else _string(tls_raw["key"], "tls.key")
    if (cert is None) != (key is None):
        missing = "tls.key" if key is None else "tls.cert"
        raise ConfigError(missing, "tls.cert and tls.key go together; give both or neither")
    base = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else "."
    tls = TlsConfig(
        cert=None if cert is None else os.path.join(base, cert),
        key=None if key is None else os.path.join(base, key),
        dev_cert_dir=_string(tls_raw.get("dev_cert_dir", "./run/dev-cert"), "tls.dev_cert_dir"),
    )

    api_raw = _mapping(top.get("master_api"), "master_api")
    _check_keys(
        api_raw,
        {
            "http", "grpc", "ca_file", "connect_timeout", "response_timeout", "max_connections",
            "grpc_connections", "keepalive_interval",
        },
        "master_api",
    )
    ca_file = None if api_raw.get("ca_file") is None else _string(
        api_raw["ca_file"], "master_api.ca_file"
    )
    connect_timeout = _seconds(api_raw.get("connect_timeout", 5.0), "master_api.connect_timeout")
    api_http = None
    if api_raw.get("http") is not None:
        api_http = replace(
            parse_http_upstream(api_raw["http"], "master_api.http"),
            ca_file=ca_file,
            connect_timeout=connect_timeout,
            response_timeout=_seconds(
                api_raw.get("response_timeout", 30.0), "master_api.response_timeout"
            ),
            max_connections=_positive_int(
                api_raw.get("max_connections", 64), "master_api.max_connections"
            ),
        )
    api_grpc = None
    if api_raw.get("grpc") is not None:
        host, port, use_tls = parse_grpc_target(api_raw["grpc"], "master_api.grpc")
        api_grpc = GrpcUpstream(
            host=host,
            port=port,
            tls=use_tls,
            address=f"{host}:{port}",
            ca_file=ca_file,
            connect_timeout=connect_timeout,
            max_connections=_positive_int(
                api_raw.get("grpc_connections", 4), "master_api.grpc_connections"
            ),
            keepalive_interval=_seconds(
                api_raw.get("keepalive_interval", 30.0), "master_api.keepalive_interval"
            ),
        )
    if api_http is None and api_grpc is None:
        raise ConfigError(
            "master_api.http", "required: the Master API's URL (e.g. http://127.0.0.1:8080)"
        )

    broker_raw = _mapping(top.get("event_broker"), "event_broker")
    _check_keys(broker_raw, {"grpc", "ca_file", "deadline", "client"}, "event_broker")
    client = broker_raw.get("client", "grpcio")
    if client not in BROKER_CLIENTS:
        raise ConfigError(
            "event_broker.client", f"expected one of: {', '.join(BROKER_CLIENTS)}, got {client!r}"
        )
    broker = None
    if broker_raw.get("grpc") is not None:
        host, port, use_tls = parse_grpc_target(broker_raw["grpc"], "event_broker.grpc")
        broker = BrokerUpstream(
            target=f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
            tls=use_tls,
            ca_file=None if broker_raw.get("ca_file") is None else _string(
                broker_raw["ca_file"], "event_broker.ca_file"
            ),
            deadline=_seconds(broker_raw.get("deadline", 5.0), "event_broker.deadline"),
            client=client,
        )
    elif broker_raw:
        raise ConfigError("event_broker.grpc", "required when event_broker is given")

    grpc_raw = _mapping(top.get("grpc"), "grpc")
    _check_keys(grpc_raw, {"allow", "deny"}, "grpc")
    allow = _prefixes(grpc_raw.get("allow", ["/"]), "grpc.allow")
    deny = _prefixes(grpc_raw.get("deny", ["/eventbroker."]), "grpc.deny")

    limits_raw = _mapping(top.get("limits"), "limits")
    defaults = Limits()
    _check_keys(limits_raw, set(Limits.__dataclass_fields__), "limits")
    max_event = _positive_int(
        limits_raw.get("max_event_size", defaults.max_event_size), "limits.max_event_size"
    )
    if max_event < MIN_EVENT_SIZE:
        raise ConfigError(
            "limits.max_event_size",
            f"must be at least {MIN_EVENT_SIZE} (CloudEvents intermediaries accept 64 KiB)",
        )
    max_header = _positive_int(
        limits_raw.get("max_header_bytes", defaults.max_header_bytes), "limits.max_header_bytes"
    )
    if max_header < 1024:
        raise ConfigError("limits.max_header_bytes", "must be at least 1024")
    limits = Limits(
        max_request_body=_positive_int(
            limits_raw.get("max_request_body", defaults.max_request_body),
            "limits.max_request_body",
        ),
        max_event_size=max_event,
        max_header_bytes=max_header,
        max_concurrent_streams=_positive_int(
            limits_raw.get("max_concurrent_streams", defaults.max_concurrent_streams),
            "limits.max_concurrent_streams",
        ),
        idle_timeout=_seconds(
            limits_raw.get("idle_timeout", defaults.idle_timeout), "limits.idle_timeout"
        ),
        header_timeout=_seconds(
            limits_raw.get("header_timeout", defaults.header_timeout), "limits.header_timeout"
        ),
    )

    log_raw = _mapping(top.get("log"), "log")
    _check_keys(log_raw, {"access"}, "log")
    access = _bool(log_raw.get("access", True), "log.access")
    workers = _positive_int(top.get("workers", 1), "workers")

    return GatewayConfig(
        listen=listen,
        tls=tls,
        master_api_http=api_http,
        master_api_grpc=api_grpc,
        event_broker=broker,
        grpc_allow=allow,
        grpc_deny=deny,
        limits=limits,
        access_log=access,
        workers=workers,
        source=source,
    )


def load_config_file(path: str) -> GatewayConfig:
    """Read and parse a YAML file; an unreadable file is a :class:`ConfigError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "config file is not UTF-8 text") from None
    return load_config(text, source=path)
