"""meshlet_agent: the CPython asyncio agent (`meshlet` CLI and daemon).

It drives the sans-I/O core in `meshlet` from real sockets, a TUN device and
timers. The WireGuard data plane arrives with issue 3, the tailnet agent with
issue 6.
"""
