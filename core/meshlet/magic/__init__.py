"""magicsock's protocol core: what the agent's one UDP socket carries, and whom to send it to.

Tailscale's magicsock multiplexes WireGuard, disco and STUN over one UDP
socket per address family and relays through DERP when no direct path works.
This package is the sans-I/O part of that: `classify` (which of the three a
datagram is, and the 127.3.3.40:<region> addresses that stand for DERP
regions), `endpoint` (one peer's path state: candidates, disco pings and
pongs, heartbeats, the trust window and the fallback to DERP) and
`betteraddr` (which of two direct paths wins).
"""
