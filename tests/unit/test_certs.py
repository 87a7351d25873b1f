"""The test PKI issues certificates that strict X.509 verification (Python 3.13's default) accepts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509

from infisical_sync.testing.certs import CertificateAuthority


def strict_client(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    # What Python 3.13 turns on by default; set explicitly so every Python checks the same.
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """A full TLS handshake in memory: no socket, no port."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end, out, peer_in in (
            ("client", tls_client, c_out, s_in),
            ("server", tls_server, s_out, c_in),
        ):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_strict_verification_accepts_server_certificates(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    cert, key = ca.issue_server(["127.0.0.1", "localhost"]).write(tmp_path, "server")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    handshake(strict_client(ca.cert_pem), server, "localhost")


def test_strict_verification_refuses_another_ca(tmp_path: Path) -> None:
    cert, key = CertificateAuthority().issue_server(["localhost"]).write(tmp_path, "server")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(strict_client(CertificateAuthority().cert_pem), server, "localhost")


def test_certificates_carry_key_identifiers() -> None:
    ca = CertificateAuthority()
    leaf = x509.load_pem_x509_certificate(ca.issue_client("user").cert_pem)
    root = x509.load_pem_x509_certificate(ca.cert_pem)
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
