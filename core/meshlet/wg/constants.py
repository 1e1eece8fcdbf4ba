"""WireGuard's numbers, in two groups (wireguard-go's `device/constants.go`).

Specification constants come from the whitepaper (§6.1 for the timers) and
must not change: a peer relies on them. Implementation constants are ours to
tune; each says why it has its value. Times are integer milliseconds (`_ms`),
because the core's clock is, and sizes are bytes.
"""

from .._compat import const

# --- specification constants ------------------------------------------------

REKEY_AFTER_MESSAGES = const(1 << 60)
REJECT_AFTER_MESSAGES = const(0xFFFFFFFFFFFFFFFF - (1 << 13))  # 2^64 - 2^13 - 1
REKEY_AFTER_TIME_MS = const(120_000)
REJECT_AFTER_TIME_MS = const(180_000)
REKEY_ATTEMPT_TIME_MS = const(90_000)
REKEY_TIMEOUT_MS = const(5_000)
KEEPALIVE_TIMEOUT_MS = const(10_000)
COOKIE_REFRESH_TIME_MS = const(120_000)
HANDSHAKE_INITIATION_RATE_MS = const(20)  # wireguard-go's HandshakeInitationRate, 1 s / 50
PADDING_MULTIPLE = const(16)

# REKEY_ATTEMPT_TIME / REKEY_TIMEOUT = 18. wireguard-go gives up once its retry
# count *exceeds* this, so a handshake is sent 20 times (the first and 19
# retries, about 95 s) before it is abandoned (timers.py).
MAX_TIMER_HANDSHAKES = const(18)

# After this long without a new session every key is erased (whitepaper §6.1, 3 x Reject-After-Time).
ZERO_KEY_MATERIAL_AFTER_MS = const(540_000)

# A keypair that we initiated is renewed on receive once it is this old, so that
# a responder that only receives still gets a fresh session in time (165 s).
KEEP_KEY_FRESH_RECEIVING_MS = const(165_000)  # REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT

# Message types: the first byte, followed by three zero bytes (a little-endian u32).
MESSAGE_INITIATION = const(1)
MESSAGE_RESPONSE = const(2)
MESSAGE_COOKIE_REPLY = const(3)
MESSAGE_TRANSPORT = const(4)

MESSAGE_INITIATION_SIZE = const(148)
MESSAGE_RESPONSE_SIZE = const(92)
MESSAGE_COOKIE_REPLY_SIZE = const(64)
MESSAGE_TRANSPORT_HEADER_SIZE = const(16)  # type, receiver, counter
MESSAGE_TRANSPORT_SIZE = const(32)  # header + tag: the smallest transport message (a keepalive)
MESSAGE_KEEPALIVE_SIZE = const(32)
MAX_MESSAGE_SIZE = const(65535)  # wireguard-go's MaxSegmentSize

# --- implementation constants -------------------------------------------------

# Retransmits wait REKEY_TIMEOUT plus a jitter drawn from 0..333 ms, as
# wireguard-go and the kernel do, so that two peers that time out together
# do not collide again on every retry.
REKEY_TIMEOUT_JITTER_MAX_MS = const(334)  # exclusive bound

# Packets held per peer while a handshake runs. wireguard-go's QueueStagedSize;
# enough to cover a TCP initial window, small enough for an MCU (the Device
# takes a smaller limit as a constructor argument).
MAX_STAGED_PACKETS = const(128)

# Handshake messages per second above which the device is "under load" and
# demands mac2 (a cookie round trip) before doing any Diffie-Hellman.
# wireguard-go uses its queue depth, 1024 / 8 = 128 waiting handshakes; one
# second's worth is the same order of magnitude and needs no queue.
UNDER_LOAD_HANDSHAKES_PER_S = const(128)
UNDER_LOAD_AFTER_MS = const(1_000)  # wireguard-go's UnderLoadAfterTime: load state lingers this long

# The tunnel MTU used for padding when the shell does not say (wg-quick's default).
DEFAULT_MTU = const(1420)
