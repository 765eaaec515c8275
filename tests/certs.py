"""Test helper: a throw-away PKI for TLS and mTLS tests (real certificates, made with ``cryptography``).

Input: a directory (usually pytest's ``tmp_path``). Output: PEM files in it and a :class:`TestPki` naming
them: a CA, a server certificate for Hubble Relay's names (``*.hubble-relay.cilium.io``, ``localhost``,
IP ``127.0.0.1``) and a client certificate signed by that CA, plus a second, untrusted CA with its own
client certificate (for "refused" cases). Keys are ECDSA P-256 (fast to make), valid from an hour ago
for two days.

Error policy: none of its own; ``cryptography`` and file-system errors propagate to the test.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# What a client sets as grpc.ssl_target_name_override (the hubble CLI's --tls-server-name).
SERVER_NAME = "instance.hubble-relay.cilium.io"
SERVER_SANS = ("*.hubble-relay.cilium.io", "localhost")
SERVER_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class TestPki:
    """Paths of the generated PEM files."""

    __test__ = False  # not a pytest test class

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    untrusted_client_cert: Path
    untrusted_client_key: Path
    rotated_client_cert: Path  # a second client certificate from the same CA (rotation tests)
    rotated_client_key: Path
    server_name: str = SERVER_NAME

    def mtls(self) -> dict[str, Any]:
        """``HubbleConfig`` settings of a client that trusts the CA and presents the client certificate."""
        return {
            "tls": True,
            "tls_ca_cert_files": (str(self.ca_cert),),
            "tls_server_name": self.server_name,
            "tls_client_cert_file": str(self.client_cert),
            "tls_client_key_file": str(self.client_key),
        }


@dataclass(frozen=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flow-auditor tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)


def _ca(common_name: str) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issued(cert, key)


def _leaf(
    issuer: _Issued,
    common_name: str,
    usage: x509.ObjectIdentifier,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> _Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if dns_names or ips:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def _write(directory: Path, stem: str, issued: _Issued, *, key: bool = True) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    if key:
        key_path.write_bytes(
            issued.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(directory: Path) -> TestPki:
    """Generate the CA, server and client certificates into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("flow-auditor test CA")
    server = _leaf(ca, SERVER_SANS[0], ExtendedKeyUsageOID.SERVER_AUTH, SERVER_SANS, SERVER_IPS)
    client = _leaf(ca, "flow-auditor.hubble-relay.cilium.io", ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca = _ca("untrusted test CA")
    untrusted = _leaf(other_ca, "intruder", ExtendedKeyUsageOID.CLIENT_AUTH)
    rotated = _leaf(ca, "flow-auditor.hubble-relay.cilium.io", ExtendedKeyUsageOID.CLIENT_AUTH)

    ca_cert, _ = _write(directory, "ca", ca, key=False)
    server_cert, server_key = _write(directory, "server", server)
    client_cert, client_key = _write(directory, "client", client)
    other_ca_cert, _ = _write(directory, "other-ca", other_ca, key=False)
    untrusted_cert, untrusted_key = _write(directory, "untrusted-client", untrusted)
    rotated_cert, rotated_key = _write(directory, "rotated-client", rotated)
    return TestPki(
        directory=directory,
        ca_cert=ca_cert,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        other_ca_cert=other_ca_cert,
        untrusted_client_cert=untrusted_cert,
        untrusted_client_key=untrusted_key,
        rotated_client_cert=rotated_cert,
        rotated_client_key=rotated_key,
    )
