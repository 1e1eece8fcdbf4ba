"""DERP, Tailscale's relay: the sans-I/O protocol pieces shared by the agent and the server.

`frames` is the frame layer (shared/protocol/derp.md §3-§5): the 5-byte
header, an incremental `FrameReader` for the byte stream, and a builder and a
parser for every frame type. The HTTP upgrade (§2) and the connection state
machines live elsewhere; the server itself is in servers/meshlet_derp.

Deliberately imports nothing, like the package above it.
"""
