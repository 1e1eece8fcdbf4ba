"""meshlet_derp: the DERP relay and STUN responder (issue 4).

A Tailscale-compatible relay (shared/protocol/derp.md), run as
`meshlet-derp` (cli.py; `python -m meshlet_derp` works too). The modules:

| module      | what                                                                      |
| ----------- | ------------------------------------------------------------------------- |
| cli.py      | the command line: flags modelled on derper, `--config FILE.toml`            |
| config.py   | settings, their defaults, the TOML file and every check                   |
| state.py    | the server key (generated once, mode 0600) and the mesh key file          |
| server.py   | the asyncio shell: listeners, one Protocol per connection, queues, timers |
| web.py      | HTTP/1.1 on h11: the /derp upgrade, probes, /generate_204, /metrics       |
| registry.py | routing without I/O: who is connected, duplicates, PeerGone, mesh routes  |
| mesh.py     | meshing: dialling the region's other relays, forwarding packets to them   |
| stun.py     | the UDP STUN responder on the core codec                                  |
| metrics.py  | counters and gauges in Prometheus' text format                            |
| log.py      | one-line logs (journald, plain or JSON), rate-limited per reason          |

The DERP protocol itself is the sans-I/O `meshlet.derp.server.ServerConn`
in the core; docs/derp.md is the operator's guide.
"""
