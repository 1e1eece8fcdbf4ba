"""meshlet: the sans-I/O protocol core shared by the agent, the servers and the firmware.

Deliberately imports nothing: on a microcontroller every import loads a whole
module, so callers import exactly the submodule they need.
"""

__version__ = "0.1.0"
