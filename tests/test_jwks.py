# mypy: disable-error-code="no-untyped-call"
"""Where JWT keys come from (eventgw.auth.jwks): a JWKS file read at start, and a JWKS
served over real HTTPS on 127.0.0.1 (a test CA), fetched at start, refreshed, rotated,
refreshed early on unknown kids (at most once per 10 s, on a Clock), failing at start
and failing later.  The network runs on the reactor; the timers on a ``Clock``."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from eventgw.auth.jwks import MAX_JWKS_BYTES, JwtAuth, check_jwt, load_jwks_file
from eventgw.auth.jwt import Reason, Rejected, Unavailable, Verified
from eventgw.config import AuthConfig, JwtProviderConfig
from eventgw.errors import ConfigError
from eventgw.tls import server_context_factory
from tests.jwt_support import ISSUER, claims, ec_key, jwks, rsa_key
from tests.test_trust import _pem, make_ca, make_server_certificate, wait_for, write

reactor: Any = global_reactor
OLD = rsa_key("old")
NEW = ec_key("new")


def token(key: Any, **changes: Any) -> str:
    now = reactor.seconds()
    return str(key.sign(claims(exp=now + 600, iat=now, nbf=now, **changes)))


class FileTests(SynchronousTestCase):
    """A JWKS file is read when the JwtAuth is built; a bad one stops the start."""

    def config(self, path: str) -> JwtProviderConfig:
        return JwtProviderConfig(name="corp", issuer=ISSUER, jwks=path, audiences=("eventgw",))

    def test_file_keys_verify(self) -> None:
        """The file's keys verify tokens at once, with no fetcher."""
        path = write(self.mktemp(), "jwks.json", jwks(OLD, NEW))
        auth = JwtAuth([self.config(path)], reactor=Clock())
        self.assertEqual(auth.fetchers, {})
        self.assertIsInstance(auth.verify(token(NEW), reactor.seconds()), Verified)

    def test_unreadable_or_invalid_file(self) -> None:
        """Missing, not JSON, or no usable key: ConfigError naming auth.jwt[N].jwks."""
        folder = self.mktemp()
        good = write(folder, "good.json", jwks(OLD))
        cases = [os.path.join(folder, "absent.json"), write(folder, "bad.json", b"{nope"),
                 write(folder, "oct.json", b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')]
        for path in cases:
            configs = [self.config(good), JwtProviderConfig(name="b", issuer="b", jwks=path)]
            with self.assertRaises(ConfigError) as caught:
                JwtAuth(configs, reactor=Clock())
            self.assertEqual(caught.exception.key, "auth.jwt[1].jwks")
            self.assertNotIn("c2VjcmV0", str(caught.exception))
            with self.assertRaises(ConfigError):
                check_jwt(AuthConfig(jwt=tuple(configs)))

    def test_oversized_file(self) -> None:
        """A file over the size bound is refused."""
        path = write(self.mktemp(), "big.json", b" " * (MAX_JWKS_BYTES + 1))
        with self.assertRaises(ConfigError):
            load_jwks_file(path, "auth.jwt[0].jwks")


class JwksServer(resource.Resource):
    """A JWKS endpoint: counts its hits, serves what the test sets."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0
        self.status = 200
        self.body = jwks(OLD)
        self.hold = False
        self.held: list[server.Request] = []

    def render_GET(self, request: server.Request) -> Any:
        self.hits += 1
        if self.hold:
            self.held.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return self.body


class UrlTests(TestCase):
    """An https:// JWKS, fetched by JwtAuth from a real TLS server on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        folder = self.mktemp()
        ca, ca_key = make_ca("eventgw jwks test CA")
        cert_pem, key_pem = make_server_certificate(ca, ca_key)
        self.ca_file = write(folder, "ca.pem", _pem(ca))
        options = server_context_factory(
            write(folder, "server.pem", cert_pem), write(folder, "server.key", key_pem)
        )
        self.jwks = JwksServer()
        self.site = WrappingFactory(server.Site(self.jwks))
        port = reactor.listenSSL(0, self.site, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # Every connection closed on both sides before the test ends (clean reactor).
        self.addCleanup(lambda: wait_for(lambda: not self.site.protocols))
        self.url = f"https://127.0.0.1:{port.getHost().port}/keys?secret=s3cr3t"
        self.clock = Clock()

    def auth(self, ca_file: str | None = None, refresh: float = 600.0) -> JwtAuth:
        config = JwtProviderConfig(name="corp", issuer=ISSUER, jwks=self.url,
                                   audiences=("eventgw",), ca_file=ca_file or self.ca_file,
                                   refresh=refresh)
        auth = JwtAuth([config], reactor=reactor, clock=self.clock)
        self.addCleanup(auth.stop)
        return auth

    def fetcher_idle(self, auth: JwtAuth) -> Any:
        return wait_for(lambda: auth.pending_refresh("corp") is None)

    def verify(self, auth: JwtAuth, key: Any, **changes: Any) -> Any:
        return auth.verify(token(key, **changes), reactor.seconds())

    @inlineCallbacks
    def started(self, auth: JwtAuth) -> Any:
        auth.start()
        yield self.fetcher_idle(auth)
        self.assertTrue(auth.fetchers["corp"].succeeded)

    @inlineCallbacks
    def test_fetched_at_start(self) -> Any:
        """start() fetches the keys once; tokens then verify; a refresh timer waits."""
        auth = self.auth()
        self.assertEqual(self.verify(auth, OLD), Unavailable("corp"))
        with capturedLogs() as events:
            yield self.started(auth)
        self.assertEqual(self.jwks.hits, 1)
        self.assertIsInstance(self.verify(auth, OLD), Verified)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [600.0])
        text = " ".join(str(e.get("url")) for e in events)
        self.assertIn("/keys", text)
        self.assertNotIn("s3cr3t", text)

    @inlineCallbacks
    def test_rotation(self) -> Any:
        """After the refresh, the new kid passes and the removed one is unknown."""
        auth = self.auth()
        yield self.started(auth)
        self.jwks.body = jwks(NEW)
        self.clock.advance(600)
        yield self.fetcher_idle(auth)
        self.assertEqual(self.jwks.hits, 2)
        self.assertIsInstance(self.verify(auth, NEW), Verified)
        self.assertEqual(self.verify(auth, OLD), Rejected(Reason.UNKNOWN_KEY, "corp"))
        self.assertIsNone(auth.pending_refresh("corp"))  # within 10 s of the last fetch
        self.assertEqual(self.jwks.hits, 2)

    @inlineCallbacks
    def test_early_refresh_once_per_10_seconds(self) -> Any:
        """A burst of unknown kids makes one early fetch, then none for 10 s."""
        auth = self.auth()
        yield self.started(auth)
        self.jwks.body = jwks(OLD, NEW)
        # Right after the start's fetch: too early for another one.
        self.assertEqual(self.verify(auth, NEW), Rejected(Reason.UNKNOWN_KEY, "corp"))
        self.assertIsNone(auth.pending_refresh("corp"))
        self.clock.advance(10)
        for n in range(20):
            self.assertEqual(self.verify(auth, NEW, sub=f"u{n}"),
                             Rejected(Reason.UNKNOWN_KEY, "corp"))
        pending = auth.pending_refresh("corp")
        self.assertIsNotNone(pending)
        yield pending
        self.assertEqual(self.jwks.hits, 2)
        self.assertIsInstance(self.verify(auth, NEW), Verified)
        stranger = rsa_key("stranger")
        for n in range(20):
            self.verify(auth, stranger, sub=f"s{n}")
        self.clock.advance(9)
        self.verify(auth, stranger)
        yield self.fetcher_idle(auth)
        self.assertEqual(self.jwks.hits, 2)
        self.clock.advance(1)
        self.verify(auth, stranger)
        yield self.fetcher_idle(auth)
        self.assertEqual(self.jwks.hits, 3)

    @inlineCallbacks
    def test_failing_at_start_then_up(self) -> Any:
        """A JWKS URL failing at start: Unavailable (one log line) until a retry works."""
        self.jwks.status = 500
        auth = self.auth()
        with capturedLogs() as events:
            auth.start()
            yield self.fetcher_idle(auth)
        self.assertEqual(self.verify(auth, OLD), Unavailable("corp"))
        failures = [e for e in events if "fetch failed" in e.get("log_format", "")]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["error"], "HTTP status 500")
        self.assertIn("503", failures[0]["kept"])
        self.jwks.status = 200
        self.clock.advance(1)  # the first retry
        yield self.fetcher_idle(auth)
        self.assertEqual(self.jwks.hits, 2)
        self.assertIsInstance(self.verify(auth, OLD), Verified)

    @inlineCallbacks
    def test_failing_refresh_keeps_the_last_good_keys(self) -> Any:
        """Refreshes failing (status, garbage, oversize) keep the keys; tokens pass."""
        auth = self.auth()
        yield self.started(auth)
        secret = OLD.jwk()["n"]
        with capturedLogs() as events:
            for status, body in [(500, b""), (200, b"<html>"),
                                 (200, b" " * (MAX_JWKS_BYTES + 10))]:
                self.jwks.status, self.jwks.body = status, body
                self.clock.advance(600)
                yield self.fetcher_idle(auth)
                self.assertIsInstance(self.verify(auth, OLD, sub=f"x{status}{len(body)}"),
                                      Verified)
        self.assertEqual(self.jwks.hits, 4)
        errors = [e["error"] for e in events if "fetch failed" in e.get("log_format", "")]
        self.assertEqual(len(errors), 3)
        self.assertIn("over", errors[2])
        self.assertTrue(all("keeping the 1 keys" in e["kept"] for e in events if "kept" in e))
        self.assertNotIn(secret, repr(events))

    @inlineCallbacks
    def test_untrusted_certificate(self) -> Any:
        """A JWKS server whose certificate does not chain to ca_file is never trusted."""
        other, _ = make_ca("another CA")
        auth = self.auth(ca_file=write(self.mktemp(), "other.pem", _pem(other)))
        auth.start()
        yield self.fetcher_idle(auth)
        self.assertFalse(auth.fetchers["corp"].succeeded)
        self.assertEqual(self.verify(auth, OLD), Unavailable("corp"))

    @inlineCallbacks
    def test_stop_cancels_timers_and_the_fetch(self) -> Any:
        """stop() leaves no timer and cancels a fetch in flight."""
        auth = self.auth()
        yield self.started(auth)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.jwks.hold = True
        self.clock.advance(600)
        yield wait_for(lambda: self.jwks.held)
        pending = auth.pending_refresh("corp")
        self.assertIsNotNone(pending)
        auth.stop()
        yield pending
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(auth.pending_refresh("corp"))
        yield wait_for(lambda: self.jwks.held[0].channel is None)

    @inlineCallbacks
    def test_reload_inherits_the_keys(self) -> Any:
        """A JwtAuth built with the one it replaces serves its keys before fetching."""
        old = self.auth()
        yield self.started(old)
        config = old.fetchers["corp"].config
        new = JwtAuth([config], reactor=reactor, clock=self.clock, previous=old)
        self.addCleanup(new.stop)
        self.assertIsInstance(self.verify(new, OLD), Verified)
        self.assertEqual(self.jwks.hits, 1)


class CheckTests(SynchronousTestCase):
    """--check (check_upstreams) reads the JWKS files too, and fetches no URL."""

    def test_bad_jwks_file_fails_the_check(self) -> None:
        """An unreadable JWKS file is the check's one-line error naming the key."""
        from dataclasses import replace

        from eventgw.config import load_config
        from eventgw.tap import check_upstreams

        config = load_config("master_api: {http: 'http://127.0.0.1:8080'}\n")
        good = write(self.mktemp(), "k.json", jwks(OLD))
        url = JwtProviderConfig(name="u", issuer="u", jwks="https://127.0.0.1:1/jwks")
        check_upstreams(replace(config, auth=AuthConfig(jwt=(
            JwtProviderConfig(name="a", issuer="a", jwks=good), url))))
        absent = JwtProviderConfig(name="b", issuer="b", jwks=good + ".absent")
        with self.assertRaises(ConfigError) as caught:
            check_upstreams(replace(config, auth=AuthConfig(jwt=(url, absent))))
        self.assertEqual(caught.exception.key, "auth.jwt[1].jwks")
