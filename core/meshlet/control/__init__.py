"""Tailscale's TS2021 control protocol, client and server side, sans-I/O.

Layered as Tailscale layers it (shared/protocol/control.md §5):

* `base`: controlbase, the Noise IK handshake carried in the HTTP upgrade and
  the encrypted record stream after it, plus the optional early payload;
* `netmap`: MapResponses (full and delta, §7.4-§7.5) folded into a NetMap,
  as Tailscale's controlclient mapSession does;
* `requests`: the RegisterRequest and MapRequest documents a node sends
  (§6.1, §7.1-§7.2).

Like the package root, this file imports nothing: callers import the
submodule they need.
"""
