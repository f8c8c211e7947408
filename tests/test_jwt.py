"""JWT checks (eventgw.auth.jwt): key sets, every refusal reason, the classic attacks,
and the cache of verified tokens.  Core: no reactor, no socket, ``now`` given."""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from eventgw.auth.jwt import (
    CACHE_TTL,
    MAX_TOKEN_LENGTH,
    InvalidJwks,
    JwtAuthenticator,
    JwtProvider,
    Reason,
    Rejected,
    Unavailable,
    Verified,
    parse_jwks,
)
from eventgw.config import JwtProviderConfig
from tests.jwt_support import (
    ISSUER,
    NOW,
    b64,
    claims,
    ec_key,
    ed_key,
    jwks,
    rsa_key,
    unsigned,
)

RSA = rsa_key("rsa-1")
EC = ec_key("ec-1")
OTHER = rsa_key("rsa-1")  # an attacker's key that claims the same kid


def provider(**changes: Any) -> JwtProvider:
    fields: dict[str, Any] = {
        "name": "corp", "issuer": ISSUER, "audiences": frozenset({"eventgw"}),
        "algorithms": frozenset({"RS256", "ES256", "PS256", "EdDSA"}), "clock_skew": 60.0,
    }
    fields.update(changes)
    return JwtProvider(**fields)


def authenticator(*keys: Any, **changes: Any) -> JwtAuthenticator:
    auth = JwtAuthenticator([provider(**changes)])
    auth.set_keys("corp", parse_jwks(jwks(*(keys or (RSA, EC)))))
    return auth


def signed(header: dict[str, Any], payload: dict[str, Any] | None = None) -> str:
    """A token with exactly ``header``, RS256-signed by RSA (PyJWT's encode rewrites some
    header parameters)."""
    body = json.dumps(payload or claims()).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(body)}"
    algorithm = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
    return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), RSA.private))}"


class KeySetTests(SynchronousTestCase):
    """parse_jwks keeps one usable public key per kid and says why it skips the rest."""

    def test_rsa_ec_and_okp_keys_by_kid(self) -> None:
        """RSA, EC and Ed25519 keys are kept by kid with the algorithms they fit."""
        keys = parse_jwks(jwks(RSA, EC, ed_key("ed-1")))
        self.assertEqual(sorted(keys.keys), ["ec-1", "ed-1", "rsa-1"])
        self.assertIn("PS256", keys.keys["rsa-1"].algorithms)
        self.assertEqual(keys.keys["ec-1"].algorithms, frozenset({"ES256"}))
        self.assertEqual(keys.keys["ed-1"].algorithms, frozenset({"EdDSA"}))
        self.assertIsNone(keys.only)

    def test_oct_and_private_and_encryption_keys_are_skipped(self) -> None:
        """Symmetric keys, private JWKs and encryption keys are never verification keys."""
        private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key().private))
        private["kid"] = "private"
        keys = parse_jwks(jwks(
            RSA, {"kty": "oct", "kid": "hmac", "k": b64(b"secret")}, private,
            EC.jwk(kid="enc", use="enc"), EC.jwk(kid="ops", key_ops=["encrypt"]),
        ))
        self.assertEqual(list(keys.keys), ["rsa-1"])
        self.assertEqual(len(keys.skipped), 4)
        text = " ".join(keys.skipped)
        self.assertIn("symmetric", text)
        self.assertIn("private key material", text)
        self.assertNotIn(b64(b"secret"), text)
        self.assertNotIn(private["d"], text)

    def test_duplicate_kid_is_dropped(self) -> None:
        """A kid listed twice is ambiguous: neither key is used."""
        keys = parse_jwks(jwks(RSA, OTHER, EC))
        self.assertEqual(list(keys.keys), ["ec-1"])
        self.assertIn("more than once", keys.skipped[0])

    def test_key_without_kid(self) -> None:
        """A kid-less key is the set's key when alone, and skipped beside others."""
        alone = parse_jwks(jwks(rsa_key(None)))
        self.assertIsNotNone(alone.only)
        self.assertIsNone(alone.find("whatever"))
        self.assertIs(alone.find(None), alone.only)
        mixed = parse_jwks(jwks(rsa_key(None), EC))
        self.assertEqual(list(mixed.keys), ["ec-1"])
        self.assertIs(mixed.find(None), mixed.keys["ec-1"])  # a set of one usable key

    def test_short_rsa_key_and_odd_curve_skipped(self) -> None:
        """RSA under 2048 bits and curves outside P-256/384/521 are skipped."""
        short = rsa_key("short", bits=1024)
        k1 = ec_key("k1", curve=ec.SECP256K1())
        keys = parse_jwks(jwks(short, k1, EC))
        self.assertEqual(list(keys.keys), ["ec-1"])

    def test_jwk_alg_must_fit(self) -> None:
        """A JWK's alg narrows the key to it; an alg of another family skips the key."""
        keys = parse_jwks(jwks(RSA.jwk(alg="PS256"), EC.jwk(alg="RS256")))
        self.assertEqual(keys.keys["rsa-1"].algorithms, frozenset({"PS256"}))
        self.assertNotIn("ec-1", keys.keys)

    def test_invalid_documents(self) -> None:
        """Not JSON, not a JWKS, or no usable key: InvalidJwks without key material."""
        for data in [b"{", b"[]", b'{"keys": {}}', b'{"keys": []}',
                     jwks({"kty": "oct", "kid": "h", "k": b64(b"topsecret")})]:
            with self.assertRaises(InvalidJwks) as caught:
                parse_jwks(data)
            self.assertNotIn(b64(b"topsecret"), str(caught.exception))

    def test_fingerprint_tells_changed_sets(self) -> None:
        """The same keys in another order give the same fingerprint; other keys another."""
        self.assertEqual(parse_jwks(jwks(RSA, EC)).fingerprint,
                         parse_jwks(jwks(EC, RSA)).fingerprint)
        self.assertNotEqual(parse_jwks(jwks(RSA, EC)).fingerprint,
                            parse_jwks(jwks(RSA)).fingerprint)


class VerifyTests(SynchronousTestCase):
    """A good token passes; each bad one is refused with its one reason."""

    def assertRejected(self, result: object, reason: Reason) -> None:
        self.assertIsInstance(result, Rejected)
        assert isinstance(result, Rejected)
        self.assertEqual(result.reason, reason)
        self.assertEqual(result.reason.value, str(reason))

    def test_rsa_and_ec_tokens_pass(self) -> None:
        """RS256, PS256 and ES256 tokens verify: provider, subject, exp."""
        auth = authenticator()
        for token in [RSA.sign(claims()), RSA.sign(claims(), alg="PS256"), EC.sign(claims())]:
            result = auth.verify(token, NOW)
            self.assertEqual(result, Verified("corp", "alice", (), NOW + 600, False))
            assert isinstance(result, Verified)
            self.assertEqual(result.identity, "jwt:corp:alice")

    def test_eddsa_token_passes(self) -> None:
        """An Ed25519 key verifies EdDSA tokens."""
        key = ed_key()
        self.assertIsInstance(authenticator(key).verify(key.sign(claims()), NOW), Verified)

    def test_forwarded_claims(self) -> None:
        """Configured claims become lower-case header pairs; non-strings are JSON."""
        auth = authenticator(forward_claims=(("sub", "x-client-id"), ("groups", "x-groups"),
                                             ("level", "x-level"), ("absent", "x-absent"),
                                             ("note", "x-note")), forward=True)
        token = RSA.sign(claims(groups=["a", "b"], level=3, note="two\r\nlines"))
        result = auth.verify(token, NOW)
        assert isinstance(result, Verified)
        self.assertEqual(result.headers, (
            ("x-client-id", "alice"), ("x-groups", '["a","b"]'), ("x-level", "3"),
            ("x-note", '"two\\r\\nlines"'),
        ))
        self.assertTrue(result.forward)

    def test_expired(self) -> None:
        """exp plus clock_skew in the past is expired; within the skew it passes."""
        auth = authenticator()
        token = RSA.sign(claims(exp=NOW - 30))
        self.assertIsInstance(auth.verify(token, NOW), Verified)
        self.assertRejected(authenticator().verify(token, NOW + 30), Reason.EXPIRED)

    def test_exp_is_required(self) -> None:
        """A token without exp is malformed (tokens that never expire are not accepted)."""
        self.assertRejected(authenticator().verify(RSA.sign(claims(exp=None)), NOW),
                            Reason.MALFORMED_TOKEN)

    def test_not_yet_valid(self) -> None:
        """nbf or iat beyond now plus the skew is not yet valid."""
        auth = authenticator()
        self.assertRejected(auth.verify(RSA.sign(claims(nbf=NOW + 61)), NOW),
                            Reason.NOT_YET_VALID)
        self.assertRejected(auth.verify(RSA.sign(claims(iat=NOW + 61)), NOW),
                            Reason.NOT_YET_VALID)
        self.assertIsInstance(auth.verify(RSA.sign(claims(nbf=NOW + 59)), NOW), Verified)

    def test_bad_signature(self) -> None:
        """A token signed by another key under the same kid: bad signature."""
        self.assertRejected(authenticator().verify(OTHER.sign(claims()), NOW),
                            Reason.BAD_SIGNATURE)
        good = RSA.sign(claims())
        tampered = good.rsplit(".", 1)[0] + "." + b64(b"\x00" * 256)
        self.assertRejected(authenticator().verify(tampered, NOW), Reason.BAD_SIGNATURE)

    def test_unknown_key(self) -> None:
        """A kid the set does not hold is an unknown key, naming the provider."""
        result = authenticator().verify(rsa_key("rsa-9").sign(claims()), NOW)
        self.assertEqual(result, Rejected(Reason.UNKNOWN_KEY, "corp"))

    def test_no_kid_with_several_keys(self) -> None:
        """Without kid, a set of several keys has no key for the token."""
        token = rsa_key(None).sign(claims())
        self.assertRejected(authenticator().verify(token, NOW), Reason.UNKNOWN_KEY)

    def test_no_kid_with_one_key(self) -> None:
        """Without kid, a set of one key uses it."""
        key = rsa_key(None)
        self.assertIsInstance(authenticator(key).verify(key.sign(claims()), NOW), Verified)

    def test_wrong_issuer(self) -> None:
        """An iss no provider has, or none at all, is the wrong issuer."""
        auth = authenticator()
        self.assertRejected(auth.verify(RSA.sign(claims(iss="https://evil/")), NOW),
                            Reason.WRONG_ISSUER)
        self.assertRejected(auth.verify(RSA.sign(claims(iss=None)), NOW), Reason.WRONG_ISSUER)

    def test_wrong_audience(self) -> None:
        """aud must name a configured audience; no aud is wrong too."""
        auth = authenticator()
        for aud in ["other", ["x", "y"], None]:
            self.assertRejected(auth.verify(RSA.sign(claims(aud=aud)), NOW),
                                Reason.WRONG_AUDIENCE)
        self.assertIsInstance(auth.verify(RSA.sign(claims(aud=["x", "eventgw"])), NOW),
                              Verified)

    def test_no_audiences_configured_accepts_any(self) -> None:
        """Without audiences, aud is not checked."""
        auth = authenticator(audiences=frozenset())
        self.assertIsInstance(auth.verify(RSA.sign(claims(aud="other")), NOW), Verified)

    def test_algorithm_not_allowed(self) -> None:
        """An alg outside the provider's list is refused before any key work."""
        auth = authenticator(algorithms=frozenset({"ES256"}))
        self.assertRejected(auth.verify(RSA.sign(claims()), NOW), Reason.ALGORITHM_NOT_ALLOWED)
        self.assertEqual(auth.verifications, 0)

    def test_alg_must_fit_the_key(self) -> None:
        """An allowed alg that does not fit the kid's key type is refused."""
        forged = EC.sign(claims(), alg="ES256", kid="rsa-1")
        self.assertRejected(authenticator().verify(forged, NOW), Reason.ALGORITHM_NOT_ALLOWED)

    def test_malformed(self) -> None:
        """Garbage, wrong shapes, claims of the wrong type, an over-long token."""
        auth = authenticator()
        for token in ["", "abc", "a.b", "a.b.c", "!!.!!.!!",
                      unsigned({"alg": "RS256"}, [1, 2]),  # type: ignore[arg-type]
                      RSA.sign(claims(exp="soon")), RSA.sign(claims(sub=None)),
                      RSA.sign(claims(sub=5)), RSA.sign(claims(aud=5)),
                      "a" * (MAX_TOKEN_LENGTH + 1)]:
            self.assertRejected(auth.verify(token, NOW), Reason.MALFORMED_TOKEN)

    def test_unavailable_until_keys_arrive(self) -> None:
        """Before a provider has keys its tokens are Unavailable, then they verify."""
        auth = JwtAuthenticator([provider()])
        token = RSA.sign(claims())
        self.assertEqual(auth.verify(token, NOW), Unavailable("corp"))
        auth.set_keys("corp", parse_jwks(jwks(RSA)))
        self.assertIsInstance(auth.verify(token, NOW), Verified)

    def test_provider_chosen_by_issuer(self) -> None:
        """Two providers: each token is checked with its own issuer's keys and rules."""
        other = rsa_key("b-1")
        auth = JwtAuthenticator([provider(), provider(name="b", issuer="https://b/",
                                                      audiences=frozenset())])
        auth.set_keys("corp", parse_jwks(jwks(RSA)))
        auth.set_keys("b", parse_jwks(jwks(other)))
        result = auth.verify(other.sign(claims(iss="https://b/", aud=None)), NOW)
        self.assertEqual(getattr(result, "provider", None), "b")
        # corp's key under b's issuer: b has no such kid.
        self.assertRejected(auth.verify(RSA.sign(claims(iss="https://b/")), NOW),
                            Reason.UNKNOWN_KEY)

    def test_from_config(self) -> None:
        """The runtime configuration gives the provider its rules."""
        config = JwtProviderConfig(name="corp", issuer=ISSUER, jwks="/k.json",
                                   audiences=("eventgw",), algorithms=("ES256",),
                                   forward_claims=(("sub", "X-Sub"),))
        made = JwtProvider.from_config(config)
        self.assertEqual(made.algorithms, frozenset({"ES256"}))
        self.assertEqual(made.forward_claims, (("sub", "x-sub"),))


class AttackTests(SynchronousTestCase):
    """The known ways to make a verifier accept a forged token all fail."""

    def assertRejected(self, result: object, *reasons: Reason) -> None:
        self.assertIsInstance(result, Rejected)
        assert isinstance(result, Rejected)
        self.assertIn(result.reason, reasons)

    def test_alg_none(self) -> None:
        """alg none (any case) is never accepted, even with an empty signature."""
        auth = authenticator()
        for alg in ["none", "None", "NONE"]:
            token = unsigned({"alg": alg, "kid": "rsa-1"}, claims())
            self.assertRejected(auth.verify(token, NOW), Reason.ALGORITHM_NOT_ALLOWED)
        self.assertEqual(auth.verifications, 0)

    def test_hs256_with_the_public_key_as_secret(self) -> None:
        """The key-confusion attack: HS256 keyed with the RSA public key PEM is refused,
        even when the provider's list (wrongly) named HS256."""
        header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
        mac = hmac.HMAC(RSA.public_pem(), hashes.SHA256())
        mac.update(signing_input.encode())
        token = f"{signing_input}.{b64(mac.finalize())}"
        self.assertRejected(authenticator().verify(token, NOW), Reason.ALGORITHM_NOT_ALLOWED)
        lax = authenticator(algorithms=frozenset({"RS256", "HS256"}))
        self.assertRejected(lax.verify(token, NOW), Reason.ALGORITHM_NOT_ALLOWED)

    def test_embedded_jwk_is_ignored(self) -> None:
        """A token carrying its own key in the jwk header is checked with the JWKS's."""
        attacker = rsa_key("rsa-1")
        token = attacker.sign(claims(), jwk=attacker.jwk())
        self.assertRejected(authenticator().verify(token, NOW), Reason.BAD_SIGNATURE)
        fresh = rsa_key("attacker")
        token = fresh.sign(claims(), jwk=fresh.jwk())
        self.assertRejected(authenticator().verify(token, NOW), Reason.UNKNOWN_KEY)

    def test_jku_and_x5u_are_ignored(self) -> None:
        """jku / x5u / x5c pointing elsewhere change nothing: the kid's key decides."""
        attacker = rsa_key("attacker")
        token = attacker.sign(claims(), jku="https://evil.example/jwks.json",
                              x5u="https://evil.example/cert.pem", x5c=["MIIB"])
        self.assertRejected(authenticator().verify(token, NOW), Reason.UNKNOWN_KEY)

    def test_signed_helper_verifies(self) -> None:
        """The hand-built token of the crit test is otherwise a good token."""
        self.assertIsInstance(authenticator().verify(signed({"alg": "RS256", "kid": "rsa-1"}),
                                                     NOW), Verified)

    def test_crit_is_refused(self) -> None:
        """A crit header (even b64, which PyJWT knows) is malformed: we know no extension."""
        auth = authenticator()
        tokens = [RSA.sign(claims(), crit=["exp"]), RSA.sign(claims(), crit=[]),
                  signed({"alg": "RS256", "kid": "rsa-1", "crit": ["b64"], "b64": True})]
        self.assertEqual(jwt.get_unverified_header(tokens[-1])["crit"], ["b64"])
        for token in tokens:
            self.assertRejected(auth.verify(token, NOW), Reason.MALFORMED_TOKEN)
        self.assertEqual(auth.verifications, 0)


class CacheTests(SynchronousTestCase):
    """Verified tokens are remembered (bounded); a hit does no signature check."""

    def test_hit_skips_the_signature_check(self) -> None:
        """The second verify of a token does not verify the signature again."""
        auth = authenticator()
        token = RSA.sign(claims())
        first = auth.verify(token, NOW)
        self.assertEqual(auth.verifications, 1)
        self.assertEqual(auth.verify(token, NOW + 1), first)
        self.assertEqual(auth.verifications, 1)
        self.assertEqual(auth.cached, 1)

    def test_refusals_are_not_cached(self) -> None:
        """A refused token is checked again each time."""
        auth = authenticator()
        token = OTHER.sign(claims())
        auth.verify(token, NOW)
        auth.verify(token, NOW)
        self.assertEqual(auth.verifications, 2)
        self.assertEqual(auth.cached, 0)

    def test_entry_ends_with_the_token(self) -> None:
        """A cached token is still refused as expired once exp plus the skew passes."""
        auth = authenticator()
        token = RSA.sign(claims(exp=NOW + 100))
        self.assertIsInstance(auth.verify(token, NOW), Verified)
        self.assertIsInstance(auth.verify(token, NOW + 159), Verified)
        self.assertEqual(auth.verifications, 1)
        result = auth.verify(token, NOW + 160)
        self.assertEqual(result, Rejected(Reason.EXPIRED, "corp"))

    def test_entry_capped(self) -> None:
        """A long-lived token is verified again after CACHE_TTL seconds."""
        auth = authenticator()
        token = RSA.sign(claims(exp=NOW + 86400))
        auth.verify(token, NOW)
        auth.verify(token, NOW + CACHE_TTL - 1)
        self.assertEqual(auth.verifications, 1)
        auth.verify(token, NOW + CACHE_TTL)
        self.assertEqual(auth.verifications, 2)

    def test_changed_keys_drop_the_entries(self) -> None:
        """New keys for the provider forget its cached tokens; the same keys do not."""
        auth = authenticator()
        token = RSA.sign(claims())
        auth.verify(token, NOW)
        self.assertFalse(auth.set_keys("corp", parse_jwks(jwks(EC, RSA))))
        self.assertEqual(auth.cached, 1)
        self.assertTrue(auth.set_keys("corp", parse_jwks(jwks(EC))))
        self.assertEqual(auth.cached, 0)
        self.assertEqual(auth.verify(token, NOW), Rejected(Reason.UNKNOWN_KEY, "corp"))

    def test_bounded(self) -> None:
        """Many distinct tokens keep the cache at its size, the oldest out first."""
        auth = JwtAuthenticator([provider()], cache_size=50)
        auth.set_keys("corp", parse_jwks(jwks(EC)))
        tokens = [EC.sign(claims(sub=f"user-{n}")) for n in range(120)]
        for token in tokens:
            self.assertIsInstance(auth.verify(token, NOW), Verified)
        self.assertEqual(auth.cached, 50)
        auth.verify(tokens[-1], NOW)
        self.assertEqual(auth.verifications, 120)  # the newest is still there
        auth.verify(tokens[0], NOW)
        self.assertEqual(auth.verifications, 121)  # the oldest was dropped


class ConfigTests(SynchronousTestCase):
    """The auth.jwt section: defaults, conversion, and one line naming each bad key."""

    BASE = "master_api: {http: 'http://127.0.0.1:8080'}\n"

    def load(self, provider: str, extra: str = "") -> Any:
        from eventgw.config import load_config

        text = (self.BASE + "auth:\n  jwt:\n    - {name: corp, issuer: 'https://idp/', "
                "jwks: 'https://idp/jwks'}\n    - " + provider + "\n" + extra)
        return load_config(text)

    def error(self, provider: str) -> str:
        from eventgw.errors import ConfigError

        with self.assertRaises(ConfigError) as caught:
            self.load(provider)
        return str(caught.exception)

    def test_defaults_and_conversion(self) -> None:
        """Defaults as documented; header names lower-cased; a URL kept as written."""
        config = self.load("{name: b, issuer: b, jwks: keys.json, audiences: [gw], "
                           "forward_claims: {sub: X-Client-Id}}")
        first, second = config.auth.jwt
        self.assertEqual(first.algorithms, ("RS256", "ES256"))
        self.assertEqual((first.clock_skew, first.refresh, first.forward), (60.0, 600.0, False))
        self.assertEqual(first.jwks, "https://idp/jwks")
        self.assertTrue(first.jwks_is_url)
        self.assertEqual(second.forward_claims, (("sub", "x-client-id"),))
        self.assertEqual(second.audiences, ("gw",))
        self.assertTrue(second.jwks.endswith("keys.json"))
        self.assertFalse(second.jwks_is_url)

    def test_no_auth_section(self) -> None:
        """Without auth, no provider."""
        from eventgw.config import load_config

        self.assertEqual(load_config(self.BASE).auth.jwt, ())

    def test_errors_name_the_key(self) -> None:
        """Each refusal is one line naming auth.jwt[1].<key>."""
        cases = {
            "{name: b, issuer: b, jwks: k.json, algorithms: [RS256, HS256]}":
                "auth.jwt[1].algorithms[1]: HS256 is a shared-secret (HMAC) algorithm",
            "{name: b, issuer: b, jwks: k.json, algorithms: [none]}":
                "auth.jwt[1].algorithms[0]: alg 'none' is never accepted",
            "{name: b, issuer: b, jwks: k.json, algorithms: []}":
                "auth.jwt[1].algorithms: must name at least one algorithm",
            "{name: b, issuer: b, jwks: 'http://idp/jwks'}":
                "auth.jwt[1].jwks: http:// is refused",
            "{name: corp, issuer: b, jwks: k.json}":
                "auth.jwt[1].name: 'corp' is already the name of auth.jwt[0]",
            "{name: b, issuer: 'https://idp/', jwks: k.json}":
                "auth.jwt[1].issuer: already the issuer of auth.jwt[0]",
            "{name: 'a:b', issuer: b, jwks: k.json}": "auth.jwt[1].name: expected a name",
            "{name: b, issuer: b, jwks: k.json, forward_claims: {sub: authorization}}":
                "auth.jwt[1].forward_claims.sub: authorization is set or removed",
            "{name: b, issuer: b, jwks: k.json, forward_claims: {sub: X-Eventgw-Client}}":
                "auth.jwt[1].forward_claims.sub: x-eventgw-client is set or removed",
            "{name: b, issuer: b, jwks: k.json, forward_claims: {sub: x-api-key}}":
                "auth.jwt[1].forward_claims.sub: x-api-key is set or removed",
            "{name: b, issuer: b, jwks: k.json, forward_claims: {sub: 'a b'}}":
                "auth.jwt[1].forward_claims.sub: expected a header name",
            "{name: b, issuer: b, jwks: k.json, forward_claims: {sub: x-a, email: X-A}}":
                "auth.jwt[1].forward_claims.email: x-a is already the header of claim 'sub'",
            "{name: b, issuer: b, jwks: k.json, ca_file: ca.pem}":
                "auth.jwt[1].ca_file: only for an https:// jwks",
            "{name: b, issuer: b, jwks: 'https://idp/', refresh: 1}":
                "auth.jwt[1].refresh: expected a number of seconds, at least 10",
            "{name: b, issuer: b, jwks: k.json, clock_skew: -1}":
                "auth.jwt[1].clock_skew: expected a number of seconds 0-3600",
            "{name: b, issuer: b, jwks: k.json, tsl: 1}": "auth.jwt[1].tsl: unknown key (known: ",
            "{name: b, issuer: b}": "auth.jwt[1].jwks: ",
        }
        for provider, start in cases.items():
            line = self.error(provider)
            self.assertTrue(line.startswith(start), line)
            self.assertNotIn("\n", line)
