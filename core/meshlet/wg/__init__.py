"""WireGuard, sans-I/O: the data plane every other part of meshlet rides on.

One concern per module, named as in the whitepaper (shared/protocol/wireguard.md
has the facts):

    constants.py   specification and implementation constants
    messages.py    MessageInitiation / MessageResponse / MessageCookieReply / MessageTransport
    tai64n.py      handshake timestamps (TAI64N, whitened, never backwards)
    handshake.py   Noise_IKpsk2 in both roles
    cookie.py      mac1 / mac2, cookie replies, the under-load policy
    replay.py      the RFC 6479 anti-replay window
    session.py     keypairs: counters, encrypt / decrypt, padding
    timers.py      the whitepaper's timers as deadlines
    allowedips.py  longest-prefix match over every peer's allowed IPs
    peer.py        per-peer state: configuration, handshake, keypairs, staged packets
    device.py      the object a shell drives: datagrams, packets, timers in; datagrams, packets, events out

Nothing here imports anything from here: a shell imports the module it needs,
usually just `meshlet.wg.device`.
"""
