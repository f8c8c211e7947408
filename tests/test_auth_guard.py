"""The access guard without sockets: credentials, rules, refusals, forwarded headers."""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from eventgw.auth.guard import Admitted, Denied, Guard
from eventgw.auth.identity import certificate_identity
from eventgw.auth.jwt import Reason, Rejected, Result, Unavailable, Verified
from eventgw.config import (
    AccessConfig,
    AccessRule,
    ApiKey,
    AuthConfig,
    ClientCertificates,
    JwtProviderConfig,
    load_config,
)
from eventgw.errors import ConfigError
from tests.support import make_head

BATCH_KEY = b"batch-secret"
OTHER_KEY = b"other-secret"


def _keys() -> tuple[ApiKey, ...]:
    return (
        ApiKey("batch", hashlib.sha256(BATCH_KEY).digest()),
        ApiKey("other", hashlib.sha256(OTHER_KEY).digest()),
    )


class FakeBearer:
    """A bearer verifier with fixed answers per token (the JWT providers' stand-in; the
    real one is tested end to end)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def verify(self, token: str, now: float) -> Result:
        self.seen.append((token, now))
        if token == "good":
            return Verified("corp", "alice", (("x-client-id", "alice"),), 1e10)
        if token == "forwarded":
            return Verified("corp", "bob", (), 1e10, forward=True)
        if token == "nokeys":
            return Unavailable("corp")
        if token == "crlf":
            return Verified("corp", "eve\r\nx-admin: 1", (), 1e10)
        return Rejected(Reason.EXPIRED, "corp")


CORP = JwtProviderConfig(name="corp", issuer="https://idp.test/", jwks="keys.json",
                         forward_claims=(("sub", "x-client-id"),))


def guard(
    rules: tuple[AccessRule, ...] = (),
    default: tuple[str, ...] = ("anyone",),
    *,
    certs: bool = False,
    bearer: FakeBearer | None = None,
) -> Guard:
    auth = AuthConfig(
        jwt=(CORP,) if bearer is not None else (),
        api_keys=_keys(),
        client_certificates=ClientCertificates("ca.pem") if certs else None,
    )
    return Guard(auth, AccessConfig(default=default, rules=rules), bearer)


def admitted(result: Admitted | Denied) -> Admitted:
    assert isinstance(result, Admitted), result
    return result


def denied(result: Admitted | Denied) -> Denied:
    assert isinstance(result, Denied), result
    return result


class GuardTests(SynchronousTestCase):
    def test_open_guard_strips_a_spoofed_identity_only(self) -> None:
        """Without auth or access configuration everything passes; a client's own
        x-eventgw-client is removed, credentials stay (they may be the upstream's)."""
        g = Guard(AuthConfig(), AccessConfig())
        self.assertTrue(g.open)
        head = make_head(headers=[(b"x-eventgw-client", b"key:admin"), (b"x-api-key", b"k"),
                                  (b"authorization", b"Bearer t")])
        result = admitted(g.check(head, 0.0))
        self.assertIsNone(result.principal)
        self.assertEqual(result.headers, [(b"x-api-key", b"k"), (b"authorization", b"Bearer t")])

    def test_api_key_admits_and_is_replaced_by_the_identity(self) -> None:
        """A known key: principal key:NAME, the key removed, x-eventgw-client added."""
        g = guard((AccessRule("/events", ("key:batch",)),), default=())
        head = make_head(target=b"/events/x", headers=[
            (b"x-api-key", BATCH_KEY), (b"x-eventgw-client", b"key:root"), (b"accept", b"*/*")])
        result = admitted(g.check(head, 1.0))
        self.assertEqual(result.principal, "key:batch")
        self.assertEqual(result.headers, [(b"accept", b"*/*"), (b"x-eventgw-client", b"key:batch")])

    def test_unknown_api_key_is_401_without_echoing_it(self) -> None:
        """An unknown key is 401 unknown api key, with the rule's schemes, whatever
        the rule (even anyone)."""
        g = guard((AccessRule("/events", ("key:batch",)),))
        for path in (b"/events", b"/api/x"):
            result = denied(g.check(make_head(target=path, headers=[(b"x-api-key", b"guess")]), 0))
            self.assertEqual((result.status, result.message), (401, "unknown api key"))
            self.assertNotIn("guess", repr(result))
        result = denied(g.check(make_head(target=b"/events", headers=[(b"x-api-key", b"g")]), 0))
        self.assertEqual(result.headers, [(b"www-authenticate", b'ApiKey realm="eventgw"')])

    def test_missing_credentials_names_the_rule_schemes(self) -> None:
        """Anonymous where nobody anonymous may call: 401 missing credentials, with
        WWW-Authenticate for each scheme the rule accepts."""
        bearer = FakeBearer()
        g = guard((AccessRule("/a", ("jwt:corp",)), AccessRule("/b", ("key:batch",)),
                   AccessRule("/c", ("authenticated",))), default=(), bearer=bearer)
        cases = {
            b"/a": [b'Bearer realm="eventgw"'],
            b"/b": [b'ApiKey realm="eventgw"'],
            b"/c": [b'Bearer realm="eventgw"', b'ApiKey realm="eventgw"'],
        }
        for path, schemes in cases.items():
            result = denied(g.check(make_head(target=path), 0))
            self.assertEqual((result.status, result.message, result.reason),
                             (401, "missing credentials", "missing_credentials"))
            self.assertEqual([v for _, v in result.headers], schemes)

    def test_identified_but_not_allowed_is_403(self) -> None:
        """A valid key the rule does not list: 403."""
        g = guard((AccessRule("/events", ("key:batch",)),), default=())
        head = make_head(target=b"/events", headers=[(b"x-api-key", OTHER_KEY)])
        result = denied(g.check(head, 0))
        self.assertEqual((result.status, result.reason), (403, "forbidden"))
        self.assertEqual(result.headers, [])

    def test_longest_prefix_wins(self) -> None:
        """/api/admin needs key:batch though /api is open to anyone."""
        g = guard((AccessRule("/api", ("anyone",)), AccessRule("/api/admin", ("key:batch",))))
        admitted(g.check(make_head(target=b"/api/public"), 0))
        self.assertEqual(denied(g.check(make_head(target=b"/api/admin/x"), 0)).status, 401)
        ok = admitted(g.check(make_head(target=b"/api/admin/x",
                                        headers=[(b"x-api-key", BATCH_KEY)]), 0))
        self.assertEqual(ok.principal, "key:batch")

    def test_grpc_method_paths_are_prefixes_too(self) -> None:
        """A gRPC method path matches a /pkg.Service/ prefix."""
        g = guard((AccessRule("/pkg.Admin/", ("key:other",)),))
        head = make_head(target=b"/pkg.Admin/Drop", protocol="HTTP/2")
        self.assertEqual(denied(g.check(head, 0)).status, 401)
        admitted(g.check(make_head(target=b"/pkg.Public/Get", protocol="HTTP/2"), 0))

    def test_empty_default_refuses_everybody_unmatched(self) -> None:
        """default [] : nobody may use what no rule matches (an identified caller: 403)."""
        g = guard(default=())
        self.assertEqual(denied(g.check(make_head(), 0)).status, 401)
        head = make_head(headers=[(b"x-api-key", BATCH_KEY)])
        self.assertEqual(denied(g.check(head, 0)).status, 403)

    def test_client_certificate_identity(self) -> None:
        """cert:IDENTITY from the head; authenticated covers it; it is forwarded."""
        rules = (AccessRule("/a", ("cert:spiffe://t/svc",)), AccessRule("/b", ("authenticated",)))
        g = guard(rules, default=(), certs=True)
        head = make_head(target=b"/a")
        head.client_identity = "spiffe://t/svc"
        result = admitted(g.check(head, 0))
        self.assertEqual(result.headers, [(b"x-eventgw-client", b"cert:spiffe://t/svc")])
        other = make_head(target=b"/a")
        other.client_identity = "spiffe://t/other"
        self.assertEqual(denied(g.check(other, 0)).status, 403)
        other.target = b"/b"
        self.assertEqual(admitted(g.check(other, 0)).principal, "cert:spiffe://t/other")

    def test_bearer_tokens(self) -> None:
        """Bearer: jwt:NAME and jwt:NAME:SUB match; the verifier's reason is the 401's;
        no keys is 503; the header is stripped unless the provider forwards it; claim
        headers replace the client's own."""
        bearer = FakeBearer()
        g = guard((AccessRule("/a", ("jwt:corp",)), AccessRule("/b", ("jwt:corp:bob",))),
                  default=(), bearer=bearer)
        head = make_head(target=b"/a", headers=[(b"authorization", b"Bearer good"),
                                                (b"x-client-id", b"mallory")])
        result = admitted(g.check(head, 7.0))
        self.assertEqual(bearer.seen, [("good", 7.0)])
        self.assertEqual(result.headers, [(b"x-eventgw-client", b"jwt:corp:alice"),
                                          (b"x-client-id", b"alice")])
        self.assertEqual(denied(g.check(make_head(target=b"/b", headers=[
            (b"authorization", b"bearer good")]), 0)).status, 403)
        forwarded = admitted(g.check(make_head(target=b"/b", headers=[
            (b"authorization", b"Bearer forwarded")]), 0))
        self.assertIn((b"authorization", b"Bearer forwarded"), forwarded.headers)
        bad = denied(g.check(make_head(target=b"/a", headers=[
            (b"authorization", b"Bearer secret-token")]), 0))
        self.assertEqual((bad.status, bad.message, bad.reason), (401, "expired", "expired"))
        self.assertNotIn("secret-token", repr(bad))
        self.assertEqual(denied(g.check(make_head(target=b"/a", headers=[
            (b"authorization", b"Bearer nokeys")]), 0)).status, 503)
        injected = denied(g.check(make_head(target=b"/a", headers=[
            (b"authorization", b"Bearer crlf")]), 0))
        self.assertEqual((injected.status, injected.message), (401, "malformed token"))

    def test_basic_authorization_is_no_bearer(self) -> None:
        """authorization: Basic is not a gateway credential: left for the upstream."""
        g = guard(bearer=FakeBearer())
        head = make_head(headers=[(b"authorization", b"Basic dTpw")])
        self.assertEqual(admitted(g.check(head, 0)).headers, [(b"authorization", b"Basic dTpw")])


def _certificate(names: list[x509.GeneralName], cn: str | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


class IdentityTests(SynchronousTestCase):
    def test_uri_then_dns_then_cn(self) -> None:
        """First URI SAN, else first DNS SAN, else CN, else None."""
        uri = _certificate([x509.DNSName("a.test"), x509.UniformResourceIdentifier("spiffe://t/1"),
                            x509.UniformResourceIdentifier("spiffe://t/2")], "cn")
        self.assertEqual(certificate_identity(uri), "spiffe://t/1")
        dns = _certificate([x509.DNSName("a.test"), x509.DNSName("b.test")], "cn")
        self.assertEqual(certificate_identity(dns), "a.test")
        self.assertEqual(certificate_identity(_certificate([], "only-cn")), "only-cn")
        self.assertIsNone(certificate_identity(_certificate([], None)))
        self.assertIsNone(certificate_identity(_certificate([], "evil\r\nx-admin: 1")))


class AccessConfigTests(SynchronousTestCase):
    BASE = "master_api: {http: 'http://127.0.0.1:1'}\n"

    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            load_config(self.BASE + text)
        return str(caught.exception)

    def test_unknown_names_are_named_by_key(self) -> None:
        """An unknown key name, jwt provider or a cert principal without a CA."""
        rules = "access: {rules: [{prefix: /a, allow: [anyone]}, {prefix: /b, allow: [anyone]}, " \
            "{prefix: /c, allow: [%s]}]}"
        self.assertEqual(self.error(rules % "key:nope"),
                         "access.rules[2].allow[0]: no auth.api_keys entry is named 'nope'")
        self.assertTrue(self.error(rules % "jwt:corp").startswith("access.rules[2].allow[0]: "))
        self.assertTrue(self.error(rules % "cert:x").startswith("access.rules[2].allow[0]: "))
        self.assertTrue(self.error("access: {default: [who]}").startswith("access.default[0]: "))

    def test_api_key_digest_and_names(self) -> None:
        """sha256 must be 64 hex digits; names are unique; the digest is kept as bytes."""
        self.assertTrue(self.error("auth: {api_keys: [{name: a, sha256: abc}]}").startswith(
            "auth.api_keys[0].sha256: "))
        digest = hashlib.sha256(b"k").hexdigest()
        self.assertTrue(self.error(
            f"auth: {{api_keys: [{{name: a, sha256: {digest}}}, {{name: a, sha256: {digest}}}]}}"
        ).startswith("auth.api_keys[1].name: "))
        config = load_config(self.BASE + f"auth: {{api_keys: [{{name: a, sha256: {digest}}}]}}")
        self.assertEqual(config.auth.api_keys, (ApiKey("a", hashlib.sha256(b"k").digest()),))
        self.assertEqual(config.access, AccessConfig())
