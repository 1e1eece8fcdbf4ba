"""meshlet_host: what the CPython shells (agent, control, DERP) share about their host.

The protocol core never touches a file or the OS; the shells do, and they
must do it the same way: state files written atomically with mode 0600 and
refused when others can read them, and systemd told when a daemon is ready.
Each helper lives here once instead of once per daemon.
"""
