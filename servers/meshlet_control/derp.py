"""The embedded DERP relay: meshlet_derp's server and STUN responder in the control server's event loop.

`meshlet-control serve` (derp = "embedded", the default) starts
`meshlet_derp.server.DerpServer` on `derp_port` of the listen host, STUN on
`stun_port`, and puts one region in the DERP map pointing at it
(config.embedded_region). Real Tailscale clients speak DERP only over TLS
(shared/protocol/derp.md §2.1), so without a certificate the relay gets a
self-signed one, made here once per host name and kept in the state
directory, and the map marks the node `InsecureForTests` (the client then
skips verification, as in Tailscale's own integration tests). With
`--derp-http` the relay serves plain HTTP instead, which clients only use
with `TS_DEBUG_USE_DERP_HTTP=1`.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os

from meshlet_derp.config import Config as DerpConfig
from meshlet_derp.config import ConfigError as DerpConfigError
from meshlet_derp.server import DerpServer
from meshlet_derp.state import load_or_create_server_key

from .config import ConfigError, EmbeddedDerp, write_secret

log = logging.getLogger("meshlet_control.derp")

CERT_DAYS = 3650  # nobody verifies it (InsecureForTests); renewing it would only break running relays


def derp_config(d: EmbeddedDerp, state_dir: str) -> DerpConfig:
    """meshlet_derp's settings for the embedded relay: no metrics listener, no mesh."""
    host = "[%s]" % d.host if ":" in d.host else d.host
    cfg = DerpConfig(
        addr="%s:%d" % (host, d.port),
        http=d.http,
        certfile=d.certfile,
        keyfile=d.keyfile,
        hostname=d.hostname,
        stun=d.stun_port > 0,
        stun_port=d.stun_port or 3478,
        state_dir=state_dir,
        metrics_addr="",
    )
    try:
        cfg.validate()
    except DerpConfigError as e:
        raise ConfigError("embedded DERP: %s" % e) from None
    return cfg


def ensure_self_signed(d: EmbeddedDerp, state_dir: str) -> bool:
    """Makes the relay's self-signed certificate unless it exists; True if it was made."""
    if not d.self_signed or (os.path.isfile(d.certfile) and os.path.isfile(d.keyfile)):
        return False
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(d.hostname))
    except ValueError:
        san = x509.DNSName(d.hostname)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, d.hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(state_dir, d.keyfile, key_pem)
    write_secret(state_dir, d.certfile, cert.public_bytes(serialization.Encoding.PEM))
    log.info("derp: made a self-signed certificate for %s in %s", d.hostname, d.certfile)
    return True


async def start_embedded(d: EmbeddedDerp, state_dir: str) -> DerpServer:
    """Starts the relay (and STUN) in the running loop; raises OSError if a port is taken."""
    ensure_self_signed(d, state_dir)
    cfg = derp_config(d, state_dir)
    try:
        private, created = load_or_create_server_key(state_dir)
    except DerpConfigError as e:
        raise ConfigError(str(e)) from None
    if created:
        log.info("derp: generated a new relay key in %s", state_dir)
    server = DerpServer(cfg, private)
    await server.start()
    return server
