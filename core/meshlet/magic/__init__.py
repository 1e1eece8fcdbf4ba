"""magicsock's protocol core: what the agent's one UDP socket carries, and whom to send it to.

Tailscale's magicsock multiplexes WireGuard, disco and STUN over one UDP
socket per address family and relays through DERP when no direct path works.
This package is the sans-I/O part of that. Today it holds `classify` (which of
the three a datagram is, and the 127.3.3.40:<region> addresses that stand for
DERP regions); it grows into magicsock's core with issue 7 (direct paths):
per-peer endpoint state machines that pick the best path from disco
ping/pong, heartbeats, and the fallback to DERP.
"""
