"""The configuration file as declared pydantic models: what each key may hold.

Core module: imports pydantic and the standard library, and reads no file.

One model per section of the YAML file, each ``extra="forbid"`` (an unknown key is an
error), ``frozen`` and ``strict``: YAML already gives integers, booleans and strings, so
``"5"`` is not a port and ``yes`` in quotes is not a boolean; only a number of seconds
may be written as an integer.  Every leaf type says in a few words what it expects, and a
value it refuses fails as ``expected <that>, got <what it was>``;
:mod:`eventgw.config.loader` turns the first failure into the one-line
:class:`~eventgw.errors.ConfigError` naming the dotted key.  The field descriptions,
defaults and bounds are also what the published JSON Schema says
(:mod:`eventgw.config.schema`); the defaults come from the runtime dataclasses.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from eventgw.config.addresses import BadAddress, split_grpc_target, split_http_url
from eventgw.config.runtime import (
    JWT_ALGORITHMS,
    MIN_EVENT_SIZE,
    AccessConfig,
    AdminConfig,
    ApiUpstream,
    Balancing,
    BrokerUpstream,
    GatewayConfig,
    GrpcUpstream,
    HealthCheck,
    JwtProviderConfig,
    Limits,
    ListenConfig,
    MetricsConfig,
    TlsConfig,
)

__all__ = [
    "SECTIONS",
    "AccessRuleSection",
    "AccessSection",
    "AdminSection",
    "ApiKeySection",
    "AuthModel",
    "ClientCertificatesSection",
    "CorsSection",
    "EventBrokerSection",
    "GatewayFile",
    "GrpcSection",
    "HealthCheckSection",
    "JwtProviderModel",
    "LimitsSection",
    "ListenSection",
    "LogSection",
    "MasterApiSection",
    "MetricsSection",
    "OutlierSection",
    "RateLimitSection",
    "ReloadSection",
    "ShutdownSection",
    "TlsSection",
    "describe",
    "principal_problem",
    "split_listen_address",
]

#: The error type of every failure this module words itself; ``ctx["message"]`` is the
#: line, and ``ctx["key"]`` (when present) the key below the failing model it is about.
ERROR_TYPE: Final = "eventgw"


def describe(value: object) -> str:
    """A refused value as an error line shows it: ``int 70000``, ``nothing``."""
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def failure(message: str, key: str | None = None) -> PydanticCustomError:
    """A validation failure worded here (``key``: a key below the model failing)."""
    context: dict[str, Any] = {"message": message}
    if key is not None:
        context["key"] = key
    return PydanticCustomError(ERROR_TYPE, "{message}", context)


def _expect(phrase: str, show: Callable[[object], str] = describe) -> WrapValidator:
    """Reword any refusal of the value itself as ``expected <phrase>, got <value>``."""

    def check(value: object, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as e:
            if any(error["loc"] for error in e.errors()):
                raise  # about an item inside the value: keep its own location
            raise failure(f"expected {phrase}, got {show(value)}") from None

    return WrapValidator(check)


def _at_least(minimum: int, why: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if value < minimum:
            raise failure(f"must be at least {minimum}{why}")
        return value

    return AfterValidator(check)


def _ip_address(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise failure(f"expected an IP address, got {text!r}") from None
    return text


def _address(split: Callable[[str], object]) -> AfterValidator:
    def check(text: str) -> str:
        try:
            split(text)
        except BadAddress as e:
            raise failure(str(e)) from None
        return text

    return AfterValidator(check)


def split_listen_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9901`` or ``[::1]:9901`` -> (IP address, port); ValueError naming
    what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected IP:port (e.g. 127.0.0.1:9901), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address before the port, got {host!r}") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port number 0-65535 after the address, got {port_text!r}")
    return host, int(port_text)


def _listen_address(text: str) -> str:
    try:
        split_listen_address(text)
    except ValueError as e:
        raise failure(str(e)) from None
    return text


#: A credential's or provider's name as principals spell it (``key:NAME``, ``jwt:NAME``).
NAME_PATTERN: Final = "^[A-Za-z0-9_.-]+$"
_NAME: Final = re.compile(NAME_PATTERN)
#: An HTTP method or header name (RFC 9110 ``token``).
_HTTP_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def principal_problem(text: str) -> str | None:
    """What is wrong with a principal's spelling, or ``None`` (names are checked by the
    file's validator, which knows the configured credentials)."""
    if text in ("anyone", "authenticated"):
        return None
    kind, sep, rest = text.partition(":")
    if sep and kind == "jwt":
        name, _, subject = rest.partition(":")
        if _NAME.match(name) and (":" not in rest or subject):
            return None
    elif sep and kind == "key" and _NAME.match(rest):
        return None
    elif sep and kind == "cert" and rest and rest.isprintable():
        return None
    return (
        f"expected one of anyone, authenticated, jwt:NAME, jwt:NAME:SUB, key:NAME, "
        f"cert:IDENTITY; got {text!r}"
    )


def _principal(text: str) -> str:
    problem = principal_problem(text)
    if problem is not None:
        raise failure(problem)
    return text


def _token(text: str) -> str:
    if not _HTTP_TOKEN.match(text):
        raise failure(f"expected an HTTP token (letters, digits, -), got {text!r}")
    return text


Port = Annotated[int, Field(ge=0, le=65535), _expect("a port number 0-65535")]
PositiveInt = Annotated[int, Field(gt=0), _expect("a positive integer")]
Seconds = Annotated[float, Field(gt=0), _expect("a positive number of seconds")]
Text = Annotated[str, Field(min_length=1), _expect("a non-empty string")]
Switch = Annotated[bool, _expect("true or false")]
IpAddress = Annotated[Text, AfterValidator(_ip_address)]
HttpUrl = Annotated[
    Text,
    _address(split_http_url),
    Field(json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+/?$"}),
]
GrpcTarget = Annotated[Text, _address(split_grpc_target)]
ListenAddress = Annotated[
    Text,
    AfterValidator(_listen_address),
    Field(json_schema_extra={"pattern": r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+):[0-9]{1,5}$"}),
]


def _one_or_list(entry: Any, phrase: str) -> WrapValidator:
    """One address, or a non-empty list of them; a bad entry is named with its index
    (``master_api.http[1]: ...``)."""
    adapter: TypeAdapter[str] = TypeAdapter(entry)

    def one(value: object, index: int | None) -> str:
        try:
            return adapter.validate_python(value, strict=True)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            context = first.get("ctx") or {}
            message = str(context.get("message", first["msg"].splitlines()[0]))
            raise failure(message, None if index is None else f"[{index}]") from None

    def check(value: object, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, list):
            if not value:
                raise failure(f"expected {phrase} or a non-empty list of them, got []")
            return [one(item, index) for index, item in enumerate(value)]
        return one(value, None)

    return WrapValidator(check)


HttpUrls = Annotated[
    HttpUrl | Annotated[list[HttpUrl], Field(min_length=1)],
    _one_or_list(HttpUrl, "an http(s):// URL"),
]
GrpcTargets = Annotated[
    GrpcTarget | Annotated[list[GrpcTarget], Field(min_length=1)],
    _one_or_list(GrpcTarget, "a host:port"),
]
MethodPrefix = Annotated[str, Field(pattern="^/"), _expect("a prefix starting with '/'")]
MethodPrefixes = Annotated[list[MethodPrefix], _expect("a list of method prefixes")]
Name = Annotated[
    str, Field(pattern=NAME_PATTERN), _expect("a name of letters, digits, '.', '_', '-'")
]
Sha256Hex = Annotated[
    str, Field(pattern="^[0-9a-fA-F]{64}$"), _expect("64 hex digits (a SHA-256 digest)")
]
Principal = Annotated[Text, AfterValidator(_principal)]
Principals = Annotated[list[Principal], _expect("a list of principals")]
Token = Annotated[Text, AfterValidator(_token)]
Tokens = Annotated[list[Token], _expect("a list of HTTP tokens")]
Origins = Annotated[list[Text], _expect("a list of origins")]
PositiveRate = Annotated[
    float, Field(gt=0), _expect("a positive number (fractions allowed)")
]
RateKey = Annotated[Literal["client", "ip", "route"], _expect("one of: client, ip, route", repr)]
NonNegativeInt = Annotated[int, Field(ge=0), _expect("a non-negative integer")]
LogFormat = Annotated[Literal["text", "json"], _expect("one of: text, json", repr)]
BrokerClient = Annotated[Literal["grpcio", "h2"], _expect("one of: grpcio, h2", repr)]
Balance = Annotated[
    Literal["least_request", "round_robin"], _expect("one of: least_request, round_robin", repr)
]
HttpPath = Annotated[Text, Field(pattern="^/"), _expect("a path starting with '/'")]

_LISTEN: Final = ListenConfig()
_TLS: Final = TlsConfig()
_HTTP: Final = ApiUpstream(scheme="", host="", port=0, url="")
_GRPC: Final = GrpcUpstream(host="", port=0, tls=False, address="")
_BROKER: Final = BrokerUpstream(target="", tls=False)
_LIMITS: Final = Limits()
_TOP: Final = GatewayConfig()
_ADMIN: Final = AdminConfig()
_METRICS: Final = MetricsConfig()
_ACCESS: Final = AccessConfig()
_BALANCING: Final = Balancing()
_HEALTH: Final = HealthCheck()
_JWT: Final = JwtProviderConfig(name="", issuer="", jwks="")

# --- auth.jwt -------------------------------------------------------------------------

# An HTTP field name (RFC 9110 section 5.1: a token).
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

#: Header names a claim may not be forwarded as: the credentials and the identity the
#: gateway itself sets or removes, the framing and hop-by-hop fields, the gateway's
#: X-Forwarded-* and gRPC's own fields.
RESERVED_CLAIM_HEADERS: Final = frozenset(
    {
        "x-eventgw-client", "authorization", "x-api-key", "proxy-authorization",
        "host", "content-length", "content-type", "transfer-encoding", "connection",
        "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
    }
)
_RESERVED_PREFIXES: Final = ("x-forwarded-", "grpc-")


def _provider_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise failure(
            f"expected a name of letters, digits, '_', '.' and '-' (rules say jwt:NAME), "
            f"got {text!r}"
        )
    return text


def _jwt_algorithm(text: str) -> str:
    if text in JWT_ALGORITHMS:
        return text
    allowed = ", ".join(JWT_ALGORITHMS)
    if text.lower() == "none":
        raise failure(f"alg 'none' is never accepted (allowed: {allowed})")
    if text.upper().startswith("HS"):
        raise failure(
            f"{text} is a shared-secret (HMAC) algorithm; only asymmetric ones are "
            f"accepted: {allowed}"
        )
    raise failure(f"expected one of: {allowed}, got {text!r}")


def _jwks_source(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text  # a file path
    if scheme.lower() == "http":
        raise failure("http:// is refused: a JWKS URL must be https:// (or give a file path)")
    if scheme.lower() != "https":
        raise failure(f"expected an https:// URL or a file path, got {text!r}")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:
        raise failure("a JWKS URL may not carry credentials (user:password@)")
    try:
        split_http_url(f"https://{authority}")
    except BadAddress as e:
        raise failure(str(e)) from None
    return text


def _header_name(text: str) -> str:
    if not _TOKEN.match(text):
        raise failure(f"expected a header name (an RFC 9110 token), got {text!r}")
    lower = text.lower()
    if lower in RESERVED_CLAIM_HEADERS or lower.startswith(_RESERVED_PREFIXES):
        raise failure(f"{lower} is set or removed by the gateway itself; choose another name")
    return lower


def _distinct_headers(mapping: dict[str, str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for claim, header in mapping.items():
        if header in seen:
            raise failure(f"{header} is already the header of claim {seen[header]!r}", key=claim)
        seen[header] = claim
    return mapping


def _not_empty(what: str) -> AfterValidator:
    def check(items: list[str]) -> list[str]:
        if not items:
            raise failure(f"must name at least one {what}")
        if len(set(items)) != len(items):
            raise failure(f"names a {what} twice")
        return items

    return AfterValidator(check)


ProviderName = Annotated[Text, AfterValidator(_provider_name)]
JwtAlgorithm = Annotated[
    Text, AfterValidator(_jwt_algorithm), Field(json_schema_extra={"enum": list(JWT_ALGORITHMS)})
]
JwksSource = Annotated[Text, AfterValidator(_jwks_source)]
HeaderName = Annotated[Text, AfterValidator(_header_name)]
Audiences = Annotated[list[Text], _expect("a list of audiences"), _not_empty("audience")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ListenSection(_Section):
    """The gateway's own listening ports."""

    tls: Port = Field(
        default=_LISTEN.tls, description="TLS port: ALPN h2 and http/1.1 (the --port flag wins)."
    )
    cleartext: Port | None = Field(
        default=_LISTEN.cleartext,
        description="Optional cleartext port: HTTP/1.1 and h2c with prior knowledge.",
    )
    interface: IpAddress = Field(default=_LISTEN.interface, description="The IP address to bind.")


class TlsSection(_Section):
    """The gateway's certificate; omit cert and key for a generated development one."""

    model_config = ConfigDict(
        json_schema_extra={"dependentRequired": {"cert": ["key"], "key": ["cert"]}}
    )

    cert: Text | None = Field(
        default=_TLS.cert,
        description="PEM certificate chain, leaf first; relative to the configuration file.",
    )
    key: Text | None = Field(
        default=_TLS.key, description="PEM private key of cert; relative to the configuration file."
    )
    dev_cert_dir: Text = Field(
        default=_TLS.dev_cert_dir,
        description="Where the development certificate is written when cert and key are "
        "not given; relative to the configuration file (the default: to the working "
        "directory).",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSection:
        if (self.cert is None) != (self.key is None):
            raise failure(
                "tls.cert and tls.key go together; give both or neither",
                key="key" if self.key is None else "cert",
            )
        return self


class HealthCheckSection(_Section):
    """Active health checks of every host; without this section, none run."""

    interval: Seconds = Field(
        default=_HEALTH.interval,
        description="Seconds between two checks of a host (jittered; fractions allowed).",
    )
    path: HttpPath = Field(
        default=_HEALTH.path, description="The path HTTP hosts are checked at (GET, 2xx passes)."
    )
    unhealthy_after: PositiveInt = Field(
        default=_HEALTH.unhealthy_after,
        description="Failed checks in a row that take a host out.",
    )
    healthy_after: PositiveInt = Field(
        default=_HEALTH.healthy_after,
        description="Passed checks in a row that bring a host back.",
    )
    grpc_service: Annotated[str, _expect("a string")] = Field(
        default=_HEALTH.grpc_service,
        description='The service gRPC hosts are checked for with grpc.health.v1.Health/Check '
        '("": the server as a whole).',
    )
    timeout: Seconds = Field(
        default=_HEALTH.timeout, description="Seconds a check may take before it fails."
    )


class OutlierSection(_Section):
    """Passive ejection: a host that fails in a row is left out for a while."""

    consecutive_failures: PositiveInt = Field(
        default=_BALANCING.outlier.consecutive_failures,
        description="Failures in a row (connect failure, reset, HTTP 502/503/504, gRPC "
        "UNAVAILABLE) that eject a host.",
    )
    eject_for: Seconds = Field(
        default=_BALANCING.outlier.eject_for,
        description="Seconds of the first ejection; each repeated one lasts twice as long "
        "(at most ten times this).",
    )


class _Balanced(_Section):
    """The keys of an upstream with several hosts."""

    balance: Balance = Field(
        default="least_request",
        description="least_request (power of two choices) or round_robin.",
    )
    resolve_interval: Seconds = Field(
        default=_BALANCING.resolve_interval,
        description="Seconds between two resolutions of host names (each address a host).",
    )
    health_check: HealthCheckSection | None = Field(
        default=None, description="Active health checks; without it, none run."
    )
    outlier: OutlierSection | None = Field(
        default=None, description="Passive ejection after failures in a row."
    )


class MasterApiSection(_Balanced):
    """The Master API: /api is proxied to its HTTP URL, gRPC calls relayed to its address."""

    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["http"]}, {"required": ["grpc"]}]}
    )

    http: HttpUrls | None = Field(
        default=None,
        description="Base URL http(s)://host[:port] that /api requests are proxied to, "
        "path and query kept as sent; or a list of them (one scheme), balanced.",
        examples=["http://127.0.0.1:8080"],
    )
    grpc: GrpcTargets | None = Field(
        default=None,
        description="Address gRPC calls are relayed to: host:port (h2c) or "
        "grpcs://host:port (TLS); or a list of them (one scheme), balanced per call.",
        examples=["127.0.0.1:50051"],
    )
    ca_file: Text | None = Field(
        default=None,
        description="CA bundle for https:// and grpcs:// upstreams (default: the system's); "
        "relative to the configuration file.",
    )
    connect_timeout: Seconds = Field(
        default=_HTTP.connect_timeout,
        description="Seconds to connect; a down upstream is 502 / UNAVAILABLE.",
    )
    response_timeout: Seconds = Field(
        default=_HTTP.response_timeout,
        description="Seconds to the response head, and between body reads (504 beyond).",
    )
    max_connections: PositiveInt = Field(
        default=_HTTP.max_connections,
        description="Pooled keep-alive HTTP/1.1 connections to master_api.http.",
    )
    grpc_connections: PositiveInt = Field(
        default=_GRPC.max_connections,
        description="HTTP/2 connections to master_api.grpc (streams are multiplexed).",
    )
    keepalive_interval: Seconds = Field(
        default=_GRPC.keepalive_interval,
        description="Seconds between PINGs on an idle gRPC upstream connection.",
    )


class EventBrokerSection(_Balanced):
    """The Event Broker: /events requests are transcoded to gRPC calls to it."""

    model_config = ConfigDict(
        json_schema_extra={
            "dependentRequired": {
                key: ["grpc"]
                for key in (
                    "ca_file", "deadline", "client", "balance", "resolve_interval",
                    "health_check", "outlier",
                )
            }
        }
    )

    grpc: GrpcTargets | None = Field(
        default=None,
        description="The broker's gRPC address: host:port (h2c) or grpcs://host:port (TLS), "
        "or a list of them (one scheme), balanced per call; required when event_broker "
        "is given.",
        examples=["127.0.0.1:50052"],
    )
    ca_file: Text | None = Field(
        default=_BROKER.ca_file,
        description="CA bundle for a grpcs:// broker (default: the system's); relative to "
        "the configuration file.",
    )
    deadline: Seconds = Field(
        default=_BROKER.deadline, description="Seconds allowed for every broker call (504 beyond)."
    )
    client: BrokerClient = Field(
        default="grpcio",
        description="grpcio, or h2: unary calls on the gateway's own HTTP/2 upstream pool.",
    )

    @model_validator(mode="after")
    def _target_given(self) -> EventBrokerSection:
        if self.grpc is None and self.model_fields_set:
            raise failure("required when event_broker is given", key="grpc")
        return self


class GrpcSection(_Section):
    """Which gRPC methods are relayed to the Master API."""

    allow: MethodPrefixes = Field(
        default=list(_TOP.grpc_allow),
        description='Method prefixes ("/pkg.Service/Method") relayed to the Master API.',
    )
    deny: MethodPrefixes = Field(
        default=list(_TOP.grpc_deny),
        description="Method prefixes refused (grpc-status 12); checked before allow.",
    )


class LimitsSection(_Section):
    """Bounds on what a client may make the gateway hold."""

    max_request_body: PositiveInt = Field(
        default=_LIMITS.max_request_body, description="Bytes of an /api request body (413 beyond)."
    )
    max_event_size: Annotated[
        PositiveInt,
        _at_least(MIN_EVENT_SIZE, " (CloudEvents intermediaries accept 64 KiB)"),
        Field(json_schema_extra={"minimum": MIN_EVENT_SIZE}),
    ] = Field(
        default=_LIMITS.max_event_size,
        description=f"Bytes of an /events body (413 beyond); never below {MIN_EVENT_SIZE}.",
    )
    max_header_bytes: Annotated[
        PositiveInt, _at_least(1024), Field(json_schema_extra={"minimum": 1024})
    ] = Field(
        default=_LIMITS.max_header_bytes,
        description="Bytes of a request head (431 / HTTP/2 stream error beyond).",
    )
    max_connections: PositiveInt = Field(
        default=_LIMITS.max_connections,
        description="Open client connections per process and port; beyond it new "
        "connections are closed at once (existing ones keep working).",
    )
    max_concurrent_streams: PositiveInt = Field(
        default=_LIMITS.max_concurrent_streams,
        description="Concurrent streams per HTTP/2 connection.",
    )
    idle_timeout: Seconds = Field(
        default=_LIMITS.idle_timeout, description="Seconds an idle client connection is kept."
    )
    header_timeout: Seconds = Field(
        default=_LIMITS.header_timeout,
        description="Seconds a client may take to send a request head.",
    )


class LogSection(_Section):
    """Logging."""

    access: Switch = Field(
        default=_TOP.access_log, description="One structured access-log event per request."
    )
    format: LogFormat = Field(
        default=_TOP.log_format,  # type: ignore[arg-type]
        description="How log lines are written: text (timestamp, [system], message) or "
        "json (one JSON object per line: time, level, system, worker, message, and every "
        "field of an access event). Fixed at start: a reload that changes it is refused "
        "(a restart is needed).",
    )


class AdminSection(_Section):
    """The admin listener: /healthz, /readyz, /metrics and gRPC health."""

    listen: ListenAddress | None = Field(
        default=None,
        description="IP:port of the admin listener (cleartext HTTP/1.1 and h2c); omit to "
        "run without one.",
        examples=[f"{_ADMIN.host}:{_ADMIN.port}"],
    )


class MetricsSection(_Section):
    """The Prometheus metrics served on the admin listener's /metrics."""

    enabled: Switch = Field(
        default=_METRICS.enabled,
        description="Count requests, gRPC calls, events and upstream outcomes; false "
        "leaves only the process-wide metrics (reloads, certificate, connections).",
    )

    max_methods: PositiveInt = Field(
        default=_METRICS.max_methods,
        description="Distinct gRPC method label values at most (methods the Master API "
        "has answered; every other one is 'other').",
    )


class ShutdownSection(_Section):
    """What SIGTERM does: drain, then exit."""

    drain_timeout: Seconds = Field(
        default=_TOP.drain_timeout,
        description="Seconds in-flight requests and streams get after SIGTERM; what is "
        "left then is reset (gRPC: UNAVAILABLE).",
    )


class ReloadSection(_Section):
    """Reloading the file (SIGHUP does it always)."""

    watch: Switch = Field(
        default=_TOP.reload_watch,
        description="Also reload when the configuration file or its directory changes "
        "(a Kubernetes ConfigMap's symlink swap included).",
    )


class ApiKeySection(_Section):
    """One API key, sent by clients as ``x-api-key: KEY``; only its digest is kept."""

    name: Name = Field(description="The key's name; access rules say key:NAME.")
    sha256: Sha256Hex = Field(
        description="Hex SHA-256 of the key (printf %s KEY | sha256sum); the key itself "
        "is never stored."
    )


class ClientCertificatesSection(_Section):
    """TLS client certificates: the identity is the first URI SAN, else the first DNS
    SAN, else the subject CN."""

    ca: Text = Field(
        description="PEM CA certificates client certificates must chain to; relative to "
        "the configuration file."
    )
    required: Switch = Field(
        default=False,
        description="true: a handshake without a client certificate fails (a certificate "
        "that does not verify always fails it).",
    )


class JwtProviderModel(_Section):
    """One issuer of bearer tokens (``Authorization: Bearer <JWT>``); rules say jwt:NAME."""

    name: ProviderName = Field(
        description="Unique name; access rules say jwt:NAME or jwt:NAME:SUB."
    )
    issuer: Text = Field(
        description="The exact iss claim of this provider's tokens; a token is checked "
        "against the provider whose issuer it names."
    )
    audiences: Audiences | None = Field(
        default=None,
        description="A token's aud must name one of these; omit to accept any audience.",
    )
    jwks: JwksSource = Field(
        description="The public keys: a JWKS file (relative to the configuration file; "
        "read at start and on reload) or an https:// URL (fetched in the background, "
        "refreshed, the last good keys kept on failure)."
    )
    algorithms: Annotated[
        list[JwtAlgorithm], _expect("a list of JWS algorithms"), _not_empty("algorithm")
    ] = Field(
        default=list(_JWT.algorithms),
        description="The JWS algorithms accepted (asymmetric only: RS*, PS*, ES*, EdDSA).",
    )
    clock_skew: Annotated[float, Field(ge=0, le=3600), _expect("a number of seconds 0-3600")] = (
        Field(
            default=_JWT.clock_skew,
            description="Seconds of leeway for exp, nbf and iat.",
        )
    )
    forward_claims: Annotated[
        dict[Text, HeaderName],
        _expect("a mapping of claim -> header name"),
        AfterValidator(_distinct_headers),
    ] = Field(
        default_factory=dict,
        description="Claims sent upstream as headers (gRPC: metadata), claim -> header name.",
        examples=[{"sub": "x-client-id"}],
    )
    forward: Switch = Field(
        default=_JWT.forward,
        description="Keep the Authorization header toward the upstream (default: removed).",
    )
    ca_file: Text | None = Field(
        default=_JWT.ca_file,
        description="CA bundle for an https:// jwks (default: the system's); relative to "
        "the configuration file.",
    )
    refresh: Annotated[float, Field(ge=10), _expect("a number of seconds, at least 10")] = Field(
        default=_JWT.refresh,
        description="Seconds between two fetches of an https:// jwks.",
    )

    @model_validator(mode="after")
    def _ca_file_for_a_url(self) -> JwtProviderModel:
        if self.ca_file is not None and not self.jwks.lower().startswith("https://"):
            raise failure("only for an https:// jwks (this one is a file)", key="ca_file")
        return self


class AuthModel(_Section):
    """Who the gateway can authenticate; without it, everything stays open."""

    jwt: Annotated[list[JwtProviderModel], _expect("a list of JWT providers")] = Field(
        default_factory=list,
        description="JWT bearer-token providers, each with its issuer and keys.",
    )
    api_keys: Annotated[list[ApiKeySection], _expect("a list of api keys")] = Field(
        default_factory=list, description="API keys (x-api-key)."
    )
    client_certificates: ClientCertificatesSection | None = Field(
        default=None, description="Ask TLS clients for a certificate signed by a CA."
    )

    @model_validator(mode="after")
    def _key_names_unique(self) -> AuthModel:
        seen: set[str] = set()
        for index, key in enumerate(self.api_keys):
            if key.name in seen:
                raise failure(
                    f"api key name {key.name!r} given twice", key=f"api_keys[{index}].name"
                )
            seen.add(key.name)
        return self

    @model_validator(mode="after")
    def _distinct(self) -> AuthModel:
        names: dict[str, int] = {}
        issuers: dict[str, int] = {}
        for index, provider in enumerate(self.jwt):
            if provider.name in names:
                raise failure(
                    f"{provider.name!r} is already the name of auth.jwt[{names[provider.name]}]",
                    key=f"jwt[{index}].name",
                )
            if provider.issuer in issuers:
                raise failure(
                    f"already the issuer of auth.jwt[{issuers[provider.issuer]}]",
                    key=f"jwt[{index}].issuer",
                )
            names[provider.name] = index
            issuers[provider.issuer] = index
        return self


class AccessRuleSection(_Section):
    """Who may call under a prefix."""

    prefix: MethodPrefix = Field(
        description='An HTTP path prefix or a gRPC "/pkg.Service/Method" prefix (plain '
        "string prefix; the longest matching rule wins)."
    )
    allow: Principals = Field(
        description="Any of: anyone, authenticated, jwt:NAME, jwt:NAME:SUB, key:NAME, "
        "cert:IDENTITY ([] = nobody)."
    )


class AccessSection(_Section):
    """Access rules: who may call what."""

    default: Principals = Field(
        default=list(_ACCESS.default),
        description="Who may use what no rule matches ([] = nobody).",
    )
    rules: Annotated[list[AccessRuleSection], _expect("a list of rules")] = Field(
        default_factory=list, description="Rules by prefix; the longest match wins."
    )


class RateLimitSection(_Section):
    """A token bucket: burst tokens, refilled at per_second; per process."""

    prefix: MethodPrefix = Field(
        description="HTTP path or gRPC method prefix the limit applies to (longest wins)."
    )
    per_second: PositiveRate = Field(description="Refill rate in requests per second.")
    burst: PositiveInt = Field(description="The bucket's capacity (at least 1).")
    by: RateKey = Field(
        default="client",
        description="client (the principal; the address when anonymous), ip, or route "
        "(one bucket for the rule).",
    )
    name: Name | None = Field(
        default=None,
        description="The policy's name in the RateLimit headers (default: the prefix).",
    )


class CorsSection(_Section):
    """Browser cross-origin access under a prefix; preflights are answered by the gateway."""

    prefix: MethodPrefix = Field(description="Path prefix (longest wins).")
    allow_origins: Origins = Field(
        description='Origins allowed, e.g. "https://app.example.com"; "*" for any.'
    )
    allow_methods: Tokens = Field(
        default_factory=lambda: ["GET", "HEAD", "POST"], description="Methods allowed."
    )
    allow_headers: Tokens = Field(
        default_factory=list, description="Request headers allowed (case-insensitive)."
    )
    max_age: NonNegativeInt = Field(
        default=600, description="Seconds a browser may cache a preflight answer."
    )
    expose_headers: Tokens = Field(
        default_factory=list, description="Response headers a page may read."
    )
    allow_credentials: Switch = Field(
        default=False, description="Let pages send cookies / credentials (never with \"*\")."
    )

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSection:
        if self.allow_credentials and "*" in self.allow_origins:
            raise failure(
                'allow_credentials cannot be true with the "*" origin (the Fetch '
                "standard refuses it)",
                key="allow_credentials",
            )
        return self


class GatewayFile(_Section):
    """eventgw's configuration file: only master_api.http or master_api.grpc is required."""

    model_config = ConfigDict(
        title="eventgw configuration", json_schema_extra={"required": ["master_api"]}
    )

    listen: ListenSection | None = None
    tls: TlsSection | None = None
    master_api: MasterApiSection | None = None
    event_broker: EventBrokerSection | None = Field(
        default=None, description="Without it, /events answers 503."
    )
    grpc: GrpcSection | None = None
    limits: LimitsSection | None = None
    log: LogSection | None = None
    shutdown: ShutdownSection | None = None
    reload: ReloadSection | None = None
    workers: PositiveInt = Field(
        default=_TOP.workers, description="Processes sharing the ports (the --workers flag wins)."
    )
    admin: AdminSection | None = None
    metrics: MetricsSection | None = None
    auth: AuthModel | None = Field(
        default=None, description="Authentication; without it, everything stays open."
    )
    access: AccessSection | None = Field(
        default=None, description="Without it (and without auth) everything stays open."
    )
    rate_limits: Annotated[list[RateLimitSection], _expect("a list of rate limits")] = Field(
        default_factory=list, description="Token buckets, in memory, per process."
    )
    cors: Annotated[list[CorsSection], _expect("a list of CORS rules")] = Field(
        default_factory=list, description="CORS rules by prefix."
    )

    @model_validator(mode="after")
    def _principals_known(self) -> GatewayFile:
        access = self.access
        if access is None:
            return self
        auth = self.auth or AuthModel()
        keys = {key.name for key in auth.api_keys}
        jwts = {provider.name for provider in auth.jwt}
        places = [(f"access.default[{i}]", p) for i, p in enumerate(access.default)]
        for r, rule in enumerate(access.rules):
            places += [(f"access.rules[{r}].allow[{i}]", p) for i, p in enumerate(rule.allow)]
        for key, principal in places:
            kind, _, rest = principal.partition(":")
            name = rest.partition(":")[0]
            if kind == "key" and name not in keys:
                raise failure(f"no auth.api_keys entry is named {name!r}", key=key)
            if kind == "jwt" and name not in jwts:
                raise failure(f"no auth.jwt provider is named {name!r}", key=key)
            if kind == "cert" and auth.client_certificates is None:
                raise failure("cert: principals need auth.client_certificates", key=key)
        return self

    @model_validator(mode="after")
    def _master_api_given(self) -> GatewayFile:
        api = self.master_api
        if api is None or (api.http is None and api.grpc is None):
            raise failure(
                "required: the Master API's URL (e.g. http://127.0.0.1:8080)",
                key="master_api.http",
            )
        return self


#: Each section's model by its dotted key (``""``: the top level), for error wording.
SECTIONS: Final[dict[str, type[BaseModel]]] = {
    "": GatewayFile,
    "listen": ListenSection,
    "tls": TlsSection,
    "master_api": MasterApiSection,
    "master_api.health_check": HealthCheckSection,
    "master_api.outlier": OutlierSection,
    "event_broker": EventBrokerSection,
    "event_broker.health_check": HealthCheckSection,
    "event_broker.outlier": OutlierSection,
    "grpc": GrpcSection,
    "limits": LimitsSection,
    "log": LogSection,
    "admin": AdminSection,
    "metrics": MetricsSection,
    "shutdown": ShutdownSection,
    "reload": ReloadSection,
    "auth": AuthModel,
    "auth.jwt[]": JwtProviderModel,
    "access": AccessSection,
}
