"""Loading the configuration: YAML text -> mapping -> validated models -> runtime objects.

Core module: imports PyYAML, pydantic and the standard library.  It reads a file only
in :func:`load_config_file`, and looks at the file system only to ask whether ``source``
exists (the file's relative paths are resolved against its folder).  It reads the
process environment only in :func:`load_config`, when given no ``environ``.

Each step is a small function: :func:`read_yaml` (text -> mapping, with ``${VAR}`` and
``${VAR:-default}`` in string values expanded from the environment it is given, see
:mod:`eventgw.config.environ`), :func:`apply_overrides`
(command-line flags set single keys of that mapping), :func:`validate` (mapping ->
:class:`~eventgw.config.model.GatewayFile`, the first failure as one
:class:`~eventgw.errors.ConfigError` naming the dotted key, or the flag that set it) and
:func:`to_config` (models -> :class:`~eventgw.config.runtime.GatewayConfig`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from eventgw.config.addresses import split_grpc_target, split_http_url
from eventgw.config.environ import expand_node
from eventgw.config.model import (
    ERROR_TYPE,
    SECTIONS,
    AccessSection,
    AdminSection,
    AuthModel,
    EventBrokerSection,
    GatewayFile,
    GrpcSection,
    JwtProviderModel,
    LimitsSection,
    ListenSection,
    LogSection,
    MasterApiSection,
    MetricsSection,
    ReloadSection,
    ShutdownSection,
    TlsSection,
    describe,
    split_listen_address,
)
from eventgw.config.runtime import (
    AccessConfig,
    AccessRule,
    AdminConfig,
    ApiKey,
    ApiUpstream,
    AuthConfig,
    Balancing,
    BrokerUpstream,
    ClientCertificates,
    CorsRule,
    GatewayConfig,
    GrpcUpstream,
    HealthCheck,
    JwtProviderConfig,
    Limits,
    ListenConfig,
    MetricsConfig,
    Outlier,
    RateLimit,
    TlsConfig,
)
from eventgw.errors import ConfigError
from eventgw.upstream.address import UpstreamAddress

__all__ = [
    "Override",
    "apply_overrides",
    "config_error",
    "load_config",
    "load_config_file",
    "read_yaml",
    "to_config",
    "validate",
]


@dataclass(frozen=True, slots=True)
class Override:
    """A command-line flag setting one key of the file (``--port`` sets ``listen.tls``)."""

    flag: str
    key: str
    value: object


# --- the steps -----------------------------------------------------------------------


def _yaml_error(e: yaml.YAMLError, source: str) -> ConfigError:
    """The one-line error for what PyYAML could not read, with the line where it knows it."""
    mark = getattr(e, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or "invalid YAML"
    return ConfigError(where, f"invalid YAML: {problem}")


def read_yaml(
    text: str, source: str, environ: Mapping[str, str] | None = None
) -> Mapping[str, Any]:
    """The top-level mapping of a YAML document (empty for an empty document).

    With ``environ``, the references in its string values are expanded from it first
    (:func:`~eventgw.config.environ.expand_node`); without, they are left as written.
    """
    try:
        loader = yaml.SafeLoader(text)  # checks the characters already
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from None
    try:
        node = loader.get_single_node()
        if node is not None and environ is not None:
            expand_node(node, loader, environ)
        raw = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _yaml_error(e, source) from None
    except RecursionError:
        raise ConfigError(source, "invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, AttributeError) as e:
        # PyYAML's constructors fail with these, not YAMLError, on some explicitly
        # tagged scalars (``!!timestamp 2024-01-01x``, ``!!int x``, ``!!float x``).
        raise ConfigError(
            source, f"invalid YAML: a tagged value cannot be built ({type(e).__name__})"
        ) from None
    finally:
        loader.dispose()
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(source, f"expected a mapping, got {describe(raw)}")
    return raw


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[Override]) -> dict[str, Any]:
    """A copy of ``raw`` with each override's key set (sections are copied, not changed)."""
    merged = dict(raw)
    for override in overrides:
        section, _, name = override.key.rpartition(".")
        if not section:
            merged[name] = override.value
            continue
        inner = merged.get(section)
        if inner is None:
            inner = {}
        elif not isinstance(inner, Mapping):
            continue  # validation reports the section itself
        merged[section] = {**inner, name: override.value}
    return merged


def validate(
    raw: Mapping[str, Any], source: str, flags: Mapping[str, str] | None = None
) -> GatewayFile:
    """The validated file; a failure is :func:`config_error` of its first error."""
    try:
        return GatewayFile.model_validate(raw)
    except ValidationError as e:
        raise config_error(e, source, flags or {}) from None


def to_config(file: GatewayFile, source: str, base: str = ".") -> GatewayConfig:
    """The runtime objects of a validated file; its relative paths (certificate, key,
    CA bundles, a written ``dev_cert_dir``) are joined to ``base``."""
    api = file.master_api or MasterApiSection()
    grpc = file.grpc or GrpcSection()
    return GatewayConfig(
        listen=ListenConfig(**(file.listen or ListenSection()).model_dump()),
        tls=_tls(file.tls or TlsSection(), base),
        master_api_http=_api_http(api, base),
        master_api_grpc=_api_grpc(api, base),
        event_broker=_broker(file.event_broker or EventBrokerSection(), base),
        grpc_allow=tuple(grpc.allow),
        grpc_deny=tuple(grpc.deny),
        limits=Limits(**(file.limits or LimitsSection()).model_dump()),
        access_log=(file.log or LogSection()).access,
        log_format=(file.log or LogSection()).format,
        workers=file.workers,
        admin=_admin(file.admin or AdminSection()),
        metrics=MetricsConfig(**(file.metrics or MetricsSection()).model_dump()),
        drain_timeout=(file.shutdown or ShutdownSection()).drain_timeout,
        reload_watch=(file.reload or ReloadSection()).watch,
        auth=_auth(file.auth or AuthModel(), base),
        access=_access(file.access or AccessSection()),
        rate_limits=tuple(
            RateLimit(
                prefix=limit.prefix,
                per_second=limit.per_second,
                burst=limit.burst,
                by=limit.by,
                name=limit.name or limit.prefix,
            )
            for limit in file.rate_limits
        ),
        cors=tuple(
            CorsRule(
                prefix=rule.prefix,
                allow_origins=tuple(rule.allow_origins),
                allow_methods=tuple(m.upper() for m in rule.allow_methods),
                allow_headers=tuple(h.lower() for h in rule.allow_headers),
                max_age=rule.max_age,
                expose_headers=tuple(h.lower() for h in rule.expose_headers),
                allow_credentials=rule.allow_credentials,
            )
            for rule in file.cors
        ),
        source=source,
    )


def load_config(
    text: str,
    source: str = "<string>",
    overrides: Iterable[Override] = (),
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Parse and validate YAML text; raise :class:`ConfigError` naming the bad key.

    ``${VAR}`` references are expanded from ``environ`` (``None``: the process's
    environment) before validation; the overrides are applied after, as given.
    """
    overrides = tuple(overrides)
    env = os.environ if environ is None else environ
    raw = apply_overrides(read_yaml(text, source, env), overrides)
    file = validate(raw, source, {o.key: o.flag for o in overrides})
    base = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else "."
    return to_config(file, source, base)


def load_config_file(
    path: str, overrides: Iterable[Override] = (), environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and parse a YAML file; an unreadable file is a :class:`ConfigError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "config file is not UTF-8 text") from None
    return load_config(text, source=path, overrides=overrides, environ=environ)


# --- models -> runtime objects -------------------------------------------------------


def _path(base: str, path: str | None) -> str | None:
    """A path of the file, relative to the file's folder (absolute ones unchanged)."""
    return None if path is None else os.path.join(base, path)


def _tls(section: TlsSection, base: str) -> TlsConfig:
    # dev_cert_dir follows the file when written in it; its default is the working
    # directory's ./run/dev-cert.
    written = "dev_cert_dir" in section.model_fields_set
    return TlsConfig(
        cert=_path(base, section.cert),
        key=_path(base, section.key),
        dev_cert_dir=os.path.join(base, section.dev_cert_dir) if written else section.dev_cert_dir,
    )


def _entries(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _balancing(section: MasterApiSection | EventBrokerSection) -> Balancing:
    check = section.health_check
    outlier = section.outlier
    return Balancing(
        balance=section.balance,
        resolve_interval=section.resolve_interval,
        health_check=None if check is None else HealthCheck(**check.model_dump()),
        outlier=Outlier() if outlier is None else Outlier(**outlier.model_dump()),
    )


def _same_scheme(key: str, index: int, got: object, first: object) -> None:
    if got != first:
        raise ConfigError(
            f"{key}[{index}]", "every host of a list must use the scheme of the first"
        )


def _api_http(api: MasterApiSection, base: str) -> ApiUpstream | None:
    if api.http is None:
        return None
    urls = [split_http_url(text) for text in _entries(api.http)]
    scheme, host, port, url = urls[0]
    for index, other in enumerate(urls):
        _same_scheme("master_api.http", index, other.scheme, scheme)
    return ApiUpstream(
        scheme=scheme,
        host=host,
        port=port,
        url=url,
        ca_file=_path(base, api.ca_file),
        connect_timeout=api.connect_timeout,
        response_timeout=api.response_timeout,
        max_connections=api.max_connections,
        hosts=tuple((u.host, u.port) for u in urls) if len(urls) > 1 else (),
        balancing=_balancing(api),
    )


def _api_grpc(api: MasterApiSection, base: str) -> GrpcUpstream | None:
    if api.grpc is None:
        return None
    targets = [split_grpc_target(text) for text in _entries(api.grpc)]
    host, port, tls = targets[0]
    for index, other in enumerate(targets):
        _same_scheme("master_api.grpc", index, other.tls, tls)
    return GrpcUpstream(
        host=host,
        port=port,
        tls=tls,
        address=UpstreamAddress(host, port).authority.decode("ascii"),
        ca_file=_path(base, api.ca_file),
        connect_timeout=api.connect_timeout,
        max_connections=api.grpc_connections,
        keepalive_interval=api.keepalive_interval,
        hosts=tuple((t.host, t.port) for t in targets) if len(targets) > 1 else (),
        balancing=_balancing(api),
    )


def _auth(section: AuthModel, base: str) -> AuthConfig:
    certs = section.client_certificates
    return AuthConfig(
        jwt=tuple(_jwt_provider(provider, base) for provider in section.jwt),
        api_keys=tuple(ApiKey(key.name, bytes.fromhex(key.sha256)) for key in section.api_keys),
        client_certificates=(
            None
            if certs is None
            else ClientCertificates(ca=os.path.join(base, certs.ca), required=certs.required)
        ),
    )


def _access(section: AccessSection) -> AccessConfig:
    return AccessConfig(
        default=tuple(section.default),
        rules=tuple(AccessRule(rule.prefix, tuple(rule.allow)) for rule in section.rules),
    )


def _admin(section: AdminSection) -> AdminConfig | None:
    if section.listen is None:
        return None
    host, port = split_listen_address(section.listen)
    return AdminConfig(host=host, port=port)


def _broker(section: EventBrokerSection, base: str) -> BrokerUpstream | None:
    if section.grpc is None:
        return None
    targets = [split_grpc_target(text) for text in _entries(section.grpc)]
    host, port, tls = targets[0]
    for index, other in enumerate(targets):
        _same_scheme("event_broker.grpc", index, other.tls, tls)
    return BrokerUpstream(
        target=UpstreamAddress(host, port).authority.decode("ascii"),
        tls=tls,
        ca_file=_path(base, section.ca_file),
        deadline=section.deadline,
        client=section.client,
        hosts=tuple((t.host, t.port) for t in targets) if len(targets) > 1 else (),
        balancing=_balancing(section),
    )


def _jwt_provider(provider: JwtProviderModel, base: str) -> JwtProviderConfig:
    url = provider.jwks.lower().startswith("https://")
    return JwtProviderConfig(
        name=provider.name,
        issuer=provider.issuer,
        jwks=provider.jwks if url else os.path.join(base, provider.jwks),
        audiences=tuple(provider.audiences or ()),
        algorithms=tuple(provider.algorithms),
        clock_skew=provider.clock_skew,
        forward_claims=tuple(provider.forward_claims.items()),
        forward=provider.forward,
        ca_file=_path(base, provider.ca_file),
        refresh=provider.refresh,
    )


# --- pydantic's ValidationError -> one line naming the key ---------------------------

_NOT_A_MAPPING = frozenset({"model_type", "model_attributes_type", "dict_type"})


def config_error(
    error: ValidationError, source: str, flags: Mapping[str, str] | None = None
) -> ConfigError:
    """The first error of ``error`` as one line: the dotted key (or the flag), a short reason."""
    first = error.errors(include_url=False)[0]
    loc, message = _located_message(first)
    key = _dotted(loc)
    if not key:
        return ConfigError(source, message)
    return ConfigError((flags or {}).get(key, key), message)


def _located_message(error: ErrorDetails) -> tuple[tuple[int | str, ...], str]:
    loc = tuple(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == ERROR_TYPE:
        below = context.get("key")
        # ``[1]``: an item's index (a list entry a validator named itself).
        parts = [int(p[1:-1]) if p.startswith("[") else p for p in (below or "").split(".") if p]
        return (*loc, *parts), str(context["message"])
    if kind == "invalid_key":
        return loc[:-1], f"keys must be strings, got {loc[-1]!r}"
    if kind == "extra_forbidden":
        # A list item's section is registered once, as ``auth.jwt[]``.
        section = SECTIONS.get(re.sub(r"\[\d+\]", "[]", _dotted(loc[:-1])))
        known = ", ".join(sorted(section.model_fields)) if section else ""
        return loc, f"unknown key (known: {known})" if known else "unknown key"
    if kind in _NOT_A_MAPPING:
        return loc, f"expected a mapping, got {describe(error.get('input'))}"
    # A failure no field words itself: pydantic's own short message, on one line.
    return loc, error["msg"].splitlines()[0]


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``("grpc", "allow", 1)`` -> ``grpc.allow[1]``; a key with a line break or another
    unprintable character is quoted (``'a\\nb'``), so the error stays one line."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            if not part.isprintable():
                part = repr(part)
            key = f"{key}.{part}" if key else part
    return key
