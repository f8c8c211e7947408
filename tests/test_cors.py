"""CORS without sockets: preflights allowed and refused, headers on real responses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from eventgw.auth.cors import CorsPolicy
from eventgw.config import CorsRule, load_config
from tests.support import make_head

APP = b"https://app.example.com"


def policy(**changes: object) -> CorsPolicy:
    values: dict[str, object] = {
        "prefix": "/api", "allow_origins": ("https://app.example.com",),
        "allow_methods": ("GET", "POST"), "allow_headers": ("content-type", "x-api-key"),
        "max_age": 600,
    }
    values.update(changes)
    return CorsPolicy([CorsRule(**values)])  # type: ignore[arg-type]


def preflight_head(origin: bytes = APP, method: bytes = b"POST", headers: bytes | None = None,
                   target: bytes = b"/api/x"):  # type: ignore[no-untyped-def]
    fields = [(b"origin", origin), (b"access-control-request-method", method)]
    if headers is not None:
        fields.append((b"access-control-request-headers", headers))
    return make_head(method=b"OPTIONS", target=target, headers=fields)


class PreflightTests(SynchronousTestCase):
    def test_allowed_preflight(self) -> None:
        """Origin, method and headers allowed: the Allow-* headers."""
        answer = policy().preflight(preflight_head(headers=b"Content-Type, X-Api-Key"))
        assert answer is not None
        self.assertTrue(answer.allowed)
        headers = dict(answer.headers)
        self.assertEqual(headers[b"access-control-allow-origin"], APP)
        self.assertEqual(headers[b"access-control-allow-methods"], b"GET, POST")
        self.assertEqual(headers[b"access-control-allow-headers"], b"content-type, x-api-key")
        self.assertEqual(headers[b"access-control-max-age"], b"600")
        self.assertNotIn(b"access-control-allow-credentials", headers)

    def test_refused_preflights_carry_no_allow_headers(self) -> None:
        """Another origin, method or header: an answer, but no Access-Control-Allow-*."""
        for head in (preflight_head(origin=b"https://evil.test"),
                     preflight_head(method=b"DELETE"),
                     preflight_head(headers=b"x-secret")):
            answer = policy().preflight(head)
            assert answer is not None
            self.assertFalse(answer.allowed)
            self.assertEqual([n for n, _ in answer.headers if n.startswith(b"access-control")], [])

    def test_not_a_preflight(self) -> None:
        """OPTIONS without Access-Control-Request-Method, or outside every prefix: None."""
        p = policy()
        self.assertIsNone(p.preflight(make_head(method=b"OPTIONS", headers=[(b"origin", APP)])))
        self.assertIsNone(p.preflight(preflight_head(target=b"/events")))
        self.assertIsNone(p.preflight(make_head(method=b"GET", headers=[(b"origin", APP)])))

    def test_wildcard_and_credentials(self) -> None:
        """"*" answers *; credentials echo the origin and say true."""
        answer = policy(allow_origins=("*",)).preflight(preflight_head(origin=b"https://x"))
        assert answer is not None
        self.assertEqual(dict(answer.headers)[b"access-control-allow-origin"], b"*")
        creds = policy(allow_credentials=True).preflight(preflight_head())
        assert creds is not None
        self.assertEqual(dict(creds.headers)[b"access-control-allow-credentials"], b"true")


class ResponseHeaderTests(SynchronousTestCase):
    def test_allowed_origin(self) -> None:
        """Allow-Origin, Vary: Origin, Expose-Headers and Allow-Credentials as configured."""
        p = policy(expose_headers=("x-request-id",), allow_credentials=True)
        headers = p.response_headers(make_head(headers=[(b"origin", APP)]))
        self.assertEqual(headers, [
            (b"access-control-allow-origin", APP), (b"vary", b"Origin"),
            (b"access-control-expose-headers", b"x-request-id"),
            (b"access-control-allow-credentials", b"true"),
        ])

    def test_other_origin_or_no_origin(self) -> None:
        """Nothing for another origin, no Origin, or a path no rule covers."""
        p = policy()
        self.assertIsNone(p.response_headers(make_head(headers=[(b"origin", b"https://evil")])))
        self.assertIsNone(p.response_headers(make_head()))
        elsewhere = make_head(target=b"/events", headers=[(b"origin", APP)])
        self.assertIsNone(p.response_headers(elsewhere))

    def test_config(self) -> None:
        """Methods upper-cased, header names lower-cased; * with credentials refused."""
        config = load_config("master_api: {http: 'http://127.0.0.1:1'}\n"
                             "cors: [{prefix: /api, allow_origins: ['https://a'], "
                             "allow_methods: [get], allow_headers: [X-Api-Key]}]")
        self.assertEqual(config.cors[0].allow_methods, ("GET",))
        self.assertEqual(config.cors[0].allow_headers, ("x-api-key",))
