"""meshlet_control: the coordination server speaking Tailscale's TS2021 protocol (issue 5)."""
