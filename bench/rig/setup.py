"""What the rig prepares once per run: the certificate, the JWT and its JWKS, the static
files, the C++ backend."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwt import encode as jwt_encode
from jwt.algorithms import ECAlgorithm

BENCH_DIR: Final = Path(__file__).resolve().parent.parent
REPO_DIR: Final = BENCH_DIR.parent
BUILD_DIR: Final = BENCH_DIR / "build"
BIG_BODY_SIZE: Final = 16 * 1024


@dataclass(frozen=True)
class Certificate:
    """A throwaway CA and a ``localhost``/127.0.0.1 leaf it signed; ``cert`` holds the chain."""

    ca: Path
    cert: Path
    key: Path


# The issuer of the bench's tokens (``auth.jwt`` in conf/gateway.yaml) and how long a
# token lives: longer than any run, so the gateway's verified-token cache always hits.
JWT_ISSUER: Final = "https://idp.bench.invalid/"
JWT_LIFETIME_S: Final = 24 * 3600


@dataclass(frozen=True)
class BenchJwt:
    """A JWKS file with one fresh ES256 key, and a token signed by it."""

    jwks: Path
    token: str


def make_jwt(directory: Path) -> BenchJwt:
    """Mint the token the ``h1-jwt-tls`` workload sends on every request (the same one, so
    the verified-token cache hits) and write the JWKS the gateway checks it against."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = dict(json.loads(ECAlgorithm.to_jwk(key.public_key())), kid="bench", use="sig")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    claims = {"iss": JWT_ISSUER, "sub": "bench", "iat": now, "exp": now + JWT_LIFETIME_S}
    token = jwt_encode(claims, key, "ES256", headers={"kid": "bench"})
    return BenchJwt(jwks=jwks, token=token)


class ConfTemplate(string.Template):
    """``@{name}`` placeholders: nginx configs use ``$`` for their own variables."""

    delimiter = "@"


def fill_template(template: Path, target: Path, **values: object) -> Path:
    """Write ``template`` with its ``@{name}`` placeholders filled in to ``target``."""
    text = ConfTemplate(template.read_text()).safe_substitute(
        {key: str(value) for key, value in values.items()}
    )
    # safe_substitute leaves "@{...}" in comments alone; a real name left over is an error.
    unfilled = sorted(set(re.findall(r"@\{(\w+)\}", text)))
    if unfilled:
        raise ValueError(f"{template}: no value for {', '.join(unfilled)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def make_certificate(directory: Path) -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = Certificate(ca=directory / "ca.pem", cert=directory / "cert.pem",
                        key=directory / "key.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.cert.write_bytes(leaf.public_bytes(pem) + ca_cert.public_bytes(pem))
    paths.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    # nginx workers drop root privileges and must still read the key (a throwaway one).
    paths.key.chmod(0o644)
    return paths


def make_static_files(www: Path) -> None:
    (www / "api").mkdir(parents=True, exist_ok=True)
    (www / "api" / "16k").write_bytes(b"x" * BIG_BODY_SIZE)


def build_backend() -> Path:
    """Build (or find up to date) the gRPC C++ backend; return the binary's path."""
    subprocess.run(
        ["make", "-s", f"OUT={BUILD_DIR}"], cwd=BENCH_DIR / "backend", check=True, timeout=300
    )
    return BUILD_DIR / "grpc_backend"
