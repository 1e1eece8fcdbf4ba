"""meshlet_derp: the DERP relay and STUN responder (issue 4)."""
