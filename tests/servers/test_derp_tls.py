"""The relay over TLS (a self-signed certificate made here): HTTP/1.1 ALPN, the upgrade, relaying."""

import asyncio
import datetime
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from derp_testclient import DerpTestClient, serve


def _self_signed(tmp_path):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    certfile, keyfile = tmp_path / "derp.crt", tmp_path / "derp.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    return str(certfile), str(keyfile)


def test_tls_relay(tmp_path):
    certfile, keyfile = _self_signed(tmp_path)

    async def body():
        async with serve(http=False, certfile=certfile, keyfile=keyfile) as srv:
            ctx = ssl.create_default_context(cafile=certfile)
            ctx.set_alpn_protocols(["h2", "http/1.1"])  # a client offering h2 gets HTTP/1.1
            a = await DerpTestClient.connect(srv.addr, tls=ctx)
            b = await DerpTestClient.connect(srv.addr, tls=ctx)
            assert a.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            a.send_packet(b.key, b"over TLS")
            assert await b.recv_packet() == (a.key, b"over TLS")

    asyncio.run(asyncio.wait_for(body(), 30))
