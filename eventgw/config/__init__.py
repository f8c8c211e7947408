# -*- test-case-name: tests.test_config -*-
"""The configuration: a YAML file in, a frozen :class:`GatewayConfig` out.

Core module: imports the standard library, PyYAML and pydantic only.  It reads no file
other than through :func:`load_config_file`, and never binds or connects: whether a port
is free or a certificate readable is found out by the shell at start, which reports it
with the same one-line :class:`~eventgw.errors.ConfigError`.  String values may name
environment variables, ``${VAR}`` or ``${VAR:-default}`` (:mod:`~eventgw.config.environ`),
expanded before validation.

Two layers, deliberately.  :mod:`~eventgw.config.model` declares the *file* as pydantic
models (the keys, their types, bounds, defaults and descriptions; the source of the
published JSON Schema, :mod:`~eventgw.config.schema`).  :mod:`~eventgw.config.runtime`
keeps the frozen, slotted dataclasses the gateway *runs* with, and
:func:`~eventgw.config.loader.to_config` turns one into the other.  The two shapes
differ: ``master_api.http`` and ``master_api.grpc`` share the section's ``ca_file`` and
``connect_timeout`` but become two upstream objects, a URL becomes scheme, host and
port, ``grpc.allow`` becomes ``grpc_allow``.  And the runtime objects are built
directly by tests and profiling harnesses and varied with :func:`dataclasses.replace`,
which stay as simple as they were; only the loader knows about pydantic.
"""

from __future__ import annotations

from eventgw.config.addresses import parse_grpc_target, parse_http_upstream
from eventgw.config.loader import (
    Override,
    apply_overrides,
    load_config,
    load_config_file,
    read_yaml,
    to_config,
    validate,
)
from eventgw.config.model import GatewayFile
from eventgw.config.runtime import (
    BROKER_CLIENTS,
    MIN_EVENT_SIZE,
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

__all__ = [
    "BROKER_CLIENTS",
    "MIN_EVENT_SIZE",
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
    "GatewayFile",
    "GrpcUpstream",
    "HealthCheck",
    "JwtProviderConfig",
    "Limits",
    "ListenConfig",
    "MetricsConfig",
    "Outlier",
    "Override",
    "RateLimit",
    "TlsConfig",
    "apply_overrides",
    "load_config",
    "load_config_file",
    "parse_grpc_target",
    "parse_http_upstream",
    "read_yaml",
    "to_config",
    "validate",
]
