"""DERP, Tailscale's relay: the sans-I/O protocol pieces shared by the agent and the server.

* `frames`: the frame layer (shared/protocol/derp.md §3-§5): the 5-byte
  header, an incremental `FrameReader`, a builder and a parser per frame type;
* `login`: ServerKey, ClientInfo and ServerInfo with their sealed JSON (§4);
* `client` and `events`: a client connection, from the HTTP upgrade (§2) to
  the steady state, and what it reports; `backoff` and `region` are the
  reconnect delay and the home-region choice (§8, §9);
* `server`: a server-side connection (CPython only, never frozen); the relay
  itself is servers/meshlet_derp.

Deliberately imports nothing, like the package above it.
"""
