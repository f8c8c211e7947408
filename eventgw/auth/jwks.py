# -*- test-case-name: tests.test_jwks -*-
"""Where each JWT provider's keys come from: a JWKS file, or an https:// URL kept fresh.

Shell module: reads files, fetches with Twisted's ``Agent``, and keeps timers.

:class:`JwtAuth` is the object the access guard holds: it builds the
:class:`~eventgw.auth.jwt.JwtAuthenticator` of ``auth.jwt`` and feeds it keys.

* A **file** ``jwks`` is read when :class:`JwtAuth` is built (the start, or a reload,
  which builds a new one); unreadable, or no usable key in it, is a
  :class:`~eventgw.errors.ConfigError` naming ``auth.jwt[N].jwks``, so the start stops
  (a reload keeps the old configuration).
* An **https://** ``jwks`` is fetched by a :class:`JwksFetcher` from :meth:`JwtAuth.start`
  on (trusting ``auth.jwt[N].ca_file`` or the system's roots; no redirect followed;
  at most :data:`MAX_JWKS_BYTES`, within :data:`FETCH_TIMEOUT` seconds), then every
  ``refresh`` seconds.  A failed fetch keeps the last good keys and logs one line (the
  URL without its query, the kind of failure, never a key); it is retried sooner, after
  1, 2, 4 ... seconds, at most :data:`RETRY_CAP` (or ``refresh``).  Until one fetch has
  succeeded the provider's tokens are :class:`~eventgw.auth.jwt.Unavailable` (the guard
  answers 503 / UNAVAILABLE); a URL that fails at start does not stop the start.
* A token with an unknown ``kid`` (or one of a provider still without keys) starts an
  early fetch, unless one is in flight or one started less than
  :data:`EARLY_REFRESH_INTERVAL` seconds ago, so unknown kids cannot hammer the JWKS
  server.  :meth:`JwtAuth.verify` does not wait for it: the request that met the new kid
  is refused with ``unknown key``, and the requests after the fetch pass.  A guard that
  prefers to hold that one request may wait on :meth:`JwtAuth.pending_refresh` (it fires
  when the fetch ends, at most :data:`FETCH_TIMEOUT` later) and verify again.

:meth:`JwtAuth.stop` (or :meth:`JwtAuth.close`) cancels the timers and the fetches in
flight; the service calls it when a reload has replaced the gateway, and at shutdown.
A new :class:`JwtAuth` given the one it replaces (``previous``) starts with that one's
keys for every URL it shares, so a reload does not turn tokens away while it refetches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from eventgw._reactor import default_reactor
from eventgw.auth.jwt import (
    InvalidJwks,
    JwtAuthenticator,
    KeySet,
    Reason,
    Rejected,
    Result,
    Unavailable,
    parse_jwks,
)
from eventgw.config.runtime import AuthConfig, JwtProviderConfig
from eventgw.errors import ConfigError
from eventgw.upstream.trust import UpstreamTrust, load_trust

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.web.iweb import IResponse

__all__ = [
    "EARLY_REFRESH_INTERVAL",
    "FETCH_TIMEOUT",
    "MAX_JWKS_BYTES",
    "RETRY_CAP",
    "JwksFetcher",
    "JwtAuth",
    "check_jwt",
    "load_jwks_file",
]

#: Bytes of a JWKS document at most: a set of a few dozen keys is a few KiB.
MAX_JWKS_BYTES: Final = 1024 * 1024
#: Seconds a fetch may take, connecting included.
FETCH_TIMEOUT: Final = 10.0
#: Seconds between two fetches started by unknown kids, per provider at most one.
EARLY_REFRESH_INTERVAL: Final = 10.0
#: Seconds at most between retries after a failed fetch.
RETRY_CAP: Final = 60.0
_RETRY_BASE: Final = 1.0


class FetchFailed(Exception):
    """A JWKS response that cannot be used; the message names no key and no secret."""


def load_jwks_file(path: str, key: str) -> KeySet:
    """The keys of a JWKS file; ConfigError naming ``key`` when it gives none."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JWKS_BYTES + 1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_JWKS_BYTES:
        raise ConfigError(key, f"{path} is over {MAX_JWKS_BYTES} bytes")
    try:
        return parse_jwks(data)
    except InvalidJwks as e:
        raise ConfigError(key, f"{path}: {e}") from None


def check_jwt(auth: AuthConfig) -> None:
    """Every JWKS file and CA bundle of ``auth.jwt`` loads (nothing is fetched)."""
    for index, provider in enumerate(auth.jwt):
        if provider.jwks_is_url:
            load_trust(provider.ca_file, f"auth.jwt[{index}].ca_file")
        else:
            load_jwks_file(provider.jwks, f"auth.jwt[{index}].jwks")


def shown_url(url: str) -> str:
    """The URL as logs show it: without query or fragment (they may carry a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _BoundedBody(Protocol):
    """Collects a response body up to a limit; beyond it, stops the transfer."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._over = False

    def dataReceived(self, data: bytes) -> None:
        if self._over:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._over = True
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]
            self._finished.errback(Failure(FetchFailed(f"response over {self._limit} bytes")))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._over or self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(reason)


class JwksFetcher:
    """Keeps one provider's keys in the authenticator fresh from its https:// JWKS.

    Invariant: at most one fetch in flight, and at most one timer pending.

    :ivar fetches: fetches started so far.
    :ivar succeeded: whether a fetch has ever succeeded (or keys were inherited).
    """

    log = Logger()

    def __init__(
        self,
        config: JwtProviderConfig,
        authenticator: JwtAuthenticator,
        trust: UpstreamTrust,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.url = config.jwks
        self._authenticator = authenticator
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._agent = Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(trust.trust_root),
            connectTimeout=FETCH_TIMEOUT,
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        self._inflight: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []
        self._timer: IDelayedCall | None = None
        self._last_start: float | None = None
        self._failures = 0
        self._running = False
        self.fetches = 0
        self.succeeded = authenticator.keys_of(self.name) is not None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Fetch now, then keep fetching."""
        if self._running:
            return
        self._running = True
        self.fetch()

    def stop(self) -> None:
        """Cancel the timer and the fetch in flight; nothing happens after this."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._inflight is not None:
            self._inflight.cancel()

    # --- fetching -------------------------------------------------------------------

    def fetch(self) -> None:
        """Start a fetch now, unless one is in flight."""
        if not self._running or self._inflight is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._last_start = self._clock.seconds()
        self.fetches += 1
        d = self._request()
        d.addTimeout(FETCH_TIMEOUT, self._clock)
        done: Deferred[None] = d.addCallback(self._got).addErrback(self._failed)
        self._inflight = done
        done.addBoth(self._finished)

    def early(self) -> None:
        """An unknown kid was met: fetch now, unless one is in flight or started less than
        :data:`EARLY_REFRESH_INTERVAL` seconds ago."""
        if not self._running or self._inflight is not None:
            return
        last = self._last_start
        if last is not None and self._clock.seconds() - last < EARLY_REFRESH_INTERVAL:
            return
        self.fetch()

    def pending(self) -> Deferred[None] | None:
        """A Deferred that fires when the fetch in flight ends (``None``: none is)."""
        if self._inflight is None:
            return None
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _request(self) -> Deferred[bytes]:
        headers = Headers({b"accept": [b"application/jwk-set+json, application/json"]})
        d = self._agent.request(b"GET", self.url.encode("ascii"), headers)
        return d.addCallback(self._body)

    def _body(self, response: IResponse) -> Deferred[bytes]:
        if response.code != 200:
            response.deliverBody(Protocol())  # drain and drop it
            raise FetchFailed(f"HTTP status {response.code}")
        length = response.length
        if isinstance(length, int) and length > MAX_JWKS_BYTES:
            response.deliverBody(Protocol())
            raise FetchFailed(f"response over {MAX_JWKS_BYTES} bytes")
        protocol: _BoundedBody

        def cancel(_: Deferred[bytes]) -> None:
            if protocol.transport is not None:
                protocol.transport.stopProducing()  # type: ignore[attr-defined]

        finished: Deferred[bytes] = Deferred(cancel)
        protocol = _BoundedBody(finished, MAX_JWKS_BYTES)
        response.deliverBody(protocol)
        return finished

    def _got(self, data: bytes) -> None:
        try:
            keys = parse_jwks(data)
        except InvalidJwks as e:
            raise FetchFailed(f"not a usable JWKS: {e}") from None
        changed = self._authenticator.set_keys(self.name, keys)
        self.succeeded = True
        self._failures = 0
        if changed:
            self.log.info(
                "JWKS of provider {provider}: {count} keys from {url}{skipped}",
                provider=self.name,
                count=len(keys),
                url=shown_url(self.url),
                skipped=f" (skipped: {'; '.join(keys.skipped)})" if keys.skipped else "",
            )

    def _failed(self, failure: Failure) -> None:
        if not self._running and failure.check(CancelledError):
            return
        self._failures += 1
        if failure.check(FetchFailed):
            error = failure.getErrorMessage()
        elif failure.check(CancelledError, TimeoutError):
            error = f"no answer within {FETCH_TIMEOUT:g} s"
        else:
            error = failure.type.__name__ if failure.type else "unknown error"
        keys = self._authenticator.keys_of(self.name)
        kept = (
            f"keeping the {len(keys)} keys of the last good fetch"
            if keys is not None
            else "no keys yet: its tokens are answered 503"
        )
        self.log.warn(
            "JWKS of provider {provider} from {url}: fetch failed ({error}); {kept}",
            provider=self.name,
            url=shown_url(self.url),
            error=error,
            kept=kept,
        )

    def _finished(self, _: object) -> None:
        self._inflight = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if not self._running:
            return
        if self._failures:
            delay = min(RETRY_CAP, self.config.refresh, _RETRY_BASE * 2 ** (self._failures - 1))
        else:
            delay = self.config.refresh
        self._timer = self._clock.callLater(delay, self.fetch)


class JwtAuth:
    """The JWT part of the access guard: ``verify`` and the key sources behind it."""

    def __init__(
        self,
        providers: Sequence[JwtProviderConfig],
        *,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        previous: JwtAuth | None = None,
    ) -> None:
        reactor = default_reactor(reactor)
        self.authenticator = JwtAuthenticator.from_config(providers)
        self.fetchers: dict[str, JwksFetcher] = {}
        for index, config in enumerate(providers):
            if not config.jwks_is_url:
                keys = load_jwks_file(config.jwks, f"auth.jwt[{index}].jwks")
                self.authenticator.set_keys(config.name, keys)
                continue
            trust = load_trust(config.ca_file, f"auth.jwt[{index}].ca_file")
            inherited = previous.keys_for(config) if previous is not None else None
            if inherited is not None:
                self.authenticator.set_keys(config.name, inherited)
            self.fetchers[config.name] = JwksFetcher(
                config, self.authenticator, trust, reactor=reactor, clock=clock
            )

    @classmethod
    def from_config(
        cls, auth: AuthConfig, reactor: Any = None, previous: JwtAuth | None = None
    ) -> JwtAuth:
        return cls(auth.jwt, reactor=reactor, previous=previous)

    def keys_for(self, config: JwtProviderConfig) -> KeySet | None:
        """The keys this one holds for a provider of the same URL and CA file."""
        for fetcher in self.fetchers.values():
            if fetcher.url == config.jwks and fetcher.config.ca_file == config.ca_file:
                return self.authenticator.keys_of(fetcher.name)
        return None

    def start(self) -> None:
        for fetcher in self.fetchers.values():
            fetcher.start()

    def stop(self) -> None:
        for fetcher in self.fetchers.values():
            fetcher.stop()

    def close(self) -> Deferred[None]:
        """:meth:`stop`, as a flow target's ``close`` is called."""
        self.stop()
        return succeed(None)

    def verify(self, token: str, now: float) -> Result:
        """Check ``token``; an unknown kid (or a provider without keys) asks its https://
        JWKS for an early refresh, which this call does not wait for."""
        result = self.authenticator.verify(token, now)
        provider: str | None = None
        if isinstance(result, Unavailable):
            provider = result.provider
        elif isinstance(result, Rejected) and result.reason is Reason.UNKNOWN_KEY:
            provider = result.provider
        if provider is not None:
            fetcher = self.fetchers.get(provider)
            if fetcher is not None:
                fetcher.early()
        return result

    def pending_refresh(self, provider: str) -> Deferred[None] | None:
        """Fires when the provider's fetch in flight ends; ``None`` when none is."""
        fetcher = self.fetchers.get(provider)
        return fetcher.pending() if fetcher is not None else None
