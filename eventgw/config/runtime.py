"""The configuration the gateway runs with: frozen dataclasses, one per section.

Core module: imports only the standard library.

These are the objects the rest of the package reads (``config.listen.tls``,
``config.master_api_http.host``, ``limits.max_event_size`` on every request).  They are
built by :mod:`eventgw.config.loader` from the validated file, and tests and profiling
harnesses build them directly; :func:`dataclasses.replace` derives variants.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

__all__ = [
    "BALANCES",
    "BALANCE_LEAST_REQUEST",
    "BALANCE_ROUND_ROBIN",
    "BROKER_CLIENTS",
    "JWT_ALGORITHMS",
    "MIN_EVENT_SIZE",
    "RATE_LIMIT_KEYS",
    "AccessConfig",
    "AccessRule",
    "AdminConfig",
    "ApiKey",
    "ApiUpstream",
    "AuthConfig",
    "Balancing",
    "BrokerUpstream",
    "ClientCertificates",
    "CorsRule",
    "GatewayConfig",
    "GrpcUpstream",
    "HealthCheck",
    "JwtProviderConfig",
    "Limits",
    "ListenConfig",
    "MetricsConfig",
    "Outlier",
    "RateLimit",
    "TlsConfig",
]

# The Event Broker clients ``event_broker.client`` may name.
BROKER_CLIENTS: Final = ("grpcio", "h2")

# What ``rate_limits[].by`` may name: the bucket is per principal (the address when
# anonymous), per client address, or one for the whole rule.
RATE_LIMIT_KEYS: Final = ("client", "ip", "route")
# The ways ``balance`` may spread requests over an upstream's hosts.
BALANCE_LEAST_REQUEST: Final = "least_request"
BALANCE_ROUND_ROBIN: Final = "round_robin"
BALANCES: Final = (BALANCE_LEAST_REQUEST, BALANCE_ROUND_ROBIN)

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
class HealthCheck:
    """``health_check``: active checks of every host (HTTP GET, or grpc.health.v1)."""

    interval: float = 5.0
    path: str = "/healthz"
    unhealthy_after: int = 3
    healthy_after: int = 2
    # The service name a gRPC host is checked for ("": the server as a whole).
    grpc_service: str = ""
    # Seconds a check may take before it counts as failed.
    timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class Outlier:
    """``outlier``: passive ejection after failures in a row."""

    consecutive_failures: int = 5
    eject_for: float = 30.0


@dataclass(frozen=True, slots=True)
class Balancing:
    """How an upstream's hosts share its requests: ``balance``, ``resolve_interval``,
    ``health_check`` (``None``: no active checks) and ``outlier``."""

    balance: str = BALANCE_LEAST_REQUEST
    resolve_interval: float = 30.0
    health_check: HealthCheck | None = None
    outlier: Outlier = field(default_factory=Outlier)

    @property
    def consecutive_failures(self) -> int:
        return self.outlier.consecutive_failures

    @property
    def eject_for(self) -> float:
        return self.outlier.eject_for


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
    # Every host (host, port) when a list is configured; empty: just host and port.
    hosts: tuple[tuple[str, int], ...] = ()
    balancing: Balancing = field(default_factory=Balancing)

    @property
    def entries(self) -> tuple[tuple[str, int], ...]:
        """The configured hosts, in order (``((host, port),)`` for one address)."""
        return self.hosts or ((self.host, self.port),)


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
    hosts: tuple[tuple[str, int], ...] = ()
    balancing: Balancing = field(default_factory=Balancing)

    @property
    def entries(self) -> tuple[tuple[str, int], ...]:
        """The configured hosts, in order (``((host, port),)`` for one address)."""
        return self.hosts or ((self.host, self.port),)


@dataclass(frozen=True, slots=True)
class BrokerUpstream:
    """``event_broker.grpc``: where ``/events`` calls go."""

    target: str
    tls: bool
    ca_file: str | None = None
    deadline: float = 5.0
    # "grpcio" (the grpcio client) or "h2" (unary calls on the gateway's own HTTP/2
    # upstream pool, all on the reactor thread).
    client: str = "grpcio"
    # Every broker (host, port) when a list is configured; empty: ``target`` alone.
    hosts: tuple[tuple[str, int], ...] = ()
    balancing: Balancing = field(default_factory=Balancing)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a client may make the gateway hold (``limits:``)."""

    max_request_body: int = 64 * 1024 * 1024
    max_event_size: int = 1024 * 1024
    max_header_bytes: int = 32 * 1024
    max_concurrent_streams: int = 100
    idle_timeout: float = 120.0
    header_timeout: float = 15.0
    # Open client connections per process (per listening port's factory); a
    # connection beyond it is closed at once.
    max_connections: int = 10_000


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``admin.listen``: the admin listener's address (cleartext HTTP/1.1 and h2c)."""

    host: str = "127.0.0.1"
    port: int = 9901


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``metrics:``: whether requests are counted, and bounds on the label values."""

    # False: requests, gRPC calls, events and upstream outcomes are not counted (the
    # admin listener still serves /metrics: reloads, certificate, connections).
    enabled: bool = True
    # Distinct gRPC method label values at most.
    max_methods: int = 500


# The JWS algorithms ``auth.jwt[].algorithms`` may list: asymmetric ones only (RFC 7518
# section 3.1), so a key published in a JWKS can never double as an HMAC secret.
JWT_ALGORITHMS: Final = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)


@dataclass(frozen=True, slots=True)
class JwtProviderConfig:
    """``auth.jwt[N]``: one issuer of bearer tokens and where its public keys are.

    ``jwks`` is an ``https://`` URL or a file path (made absolute by the loader);
    ``forward_claims`` is (claim, lower-case header name) pairs, in file order.
    """

    name: str
    issuer: str
    jwks: str
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    clock_skew: float = 60.0
    forward_claims: tuple[tuple[str, str], ...] = ()
    # Keep the Authorization header toward the upstream (default: removed).
    forward: bool = False
    # The CA bundle for an https:// jwks (None: the system's).
    ca_file: str | None = None
    # Seconds between two fetches of an https:// jwks.
    refresh: float = 600.0

    @property
    def jwks_is_url(self) -> bool:
        return self.jwks.lower().startswith("https://")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """``auth.api_keys[]``: a key's name and the SHA-256 digest of the key (32 bytes)."""

    name: str
    sha256: bytes


@dataclass(frozen=True, slots=True)
class ClientCertificates:
    """``auth.client_certificates``: the CA client certificates must chain to."""

    ca: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``auth:``: the credentials the gateway accepts (none: everybody is anonymous,
    everything stays open unless ``access`` says otherwise)."""

    jwt: tuple[JwtProviderConfig, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    client_certificates: ClientCertificates | None = None


@dataclass(frozen=True, slots=True)
class AccessRule:
    """``access.rules[]``: who may call under a path or gRPC method prefix."""

    prefix: str
    allow: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """``access:``: the rules, and who may use what no rule matches."""

    default: tuple[str, ...] = ("anyone",)
    rules: tuple[AccessRule, ...] = ()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate_limits[]``: a token bucket of ``burst`` tokens refilled at ``per_second``."""

    prefix: str
    per_second: float
    burst: int
    by: str = "client"
    # The policy's name in the RateLimit headers (default: the prefix).
    name: str = ""


@dataclass(frozen=True, slots=True)
class CorsRule:
    """``cors[]``: which browser origins may call under a prefix."""

    prefix: str
    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    allow_headers: tuple[str, ...] = ()
    max_age: int = 600
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False


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
    # ``log.format``: "text" (twistd's classic lines) or "json" (one object per line).
    log_format: str = "text"
    workers: int = 1
    # None: no admin listener.
    admin: AdminConfig | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # ``shutdown.drain_timeout``: seconds in-flight work gets after SIGTERM.
    drain_timeout: float = 30.0
    # ``reload.watch``: also reload when the file (or its directory) changes.
    reload_watch: bool = False
    auth: AuthConfig = field(default_factory=AuthConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    rate_limits: tuple[RateLimit, ...] = ()
    cors: tuple[CorsRule, ...] = ()
    source: str = "<defaults>"

    def with_overrides(self, **changes: Any) -> GatewayConfig:
        return replace(self, **changes)
