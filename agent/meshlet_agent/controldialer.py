"""Which control server the loop talks to, with which keys: one ControlClient, dialled on demand.

The control loop (controlloop.py) asks for a connected client before each
login and map poll, and drops the connection after each failure. The client
is made for the prefs' control URL (TLS for https), carries the store's
current node key, and pins the server key from an enrollment code: that pin
is compared with `GET /key` once per `start()` and again after each dropped
connection, for a clear error if the server's key changed. Without a pin the
key is asked for again on the next dial.
"""

import ssl as _ssl

from meshlet.enroll import split_control_url
from meshlet.key import DiscoPublic, MachinePublic, NodePrivate

from .controlclient import ControlClient
from .controllogin import check_pinned_key
from .statestore import StateStore


class ControlDialer:
    """The loop's ControlClient.

    Args:
        store: the node's keys and prefs (control URL).
        disco: this run's disco public key (sent in every MapRequest).
        ssl_context: for an https control URL (default: the system's trust store).

    Attributes:
        client: the ControlClient, None before the first dial and after `restart`.
        pin: the control server's key pinned by an enrollment code, or None.
    """

    def __init__(self, store: StateStore, disco: DiscoPublic, ssl_context: _ssl.SSLContext | None) -> None:
        self.store = store
        self.disco = disco
        self._ssl_context = ssl_context
        pin = store.prefs.server_key
        self.pin: MachinePublic | None = MachinePublic.from_text(pin) if pin else None
        self._pin_checked = False
        self.client: ControlClient | None = None

    def restart(self, pin: MachinePublic | None) -> ControlClient | None:
        """A new `start()`: forgets the client (returned, for the caller to close) and takes `pin`."""
        self.pin = pin
        self._pin_checked = False
        client, self.client = self.client, None
        return client

    async def connected(self) -> ControlClient:
        """The ControlClient for the prefs' control URL, dialled; checks a pinned key once.

        Raises:
            ActionNeeded: the server presents another key than the pinned one.
            ControlError, EnrollCodeError (an unusable control URL), OSError.
        """
        prefs = self.store.prefs
        scheme, host, port = split_control_url(prefs.control_url)
        tls = (self._ssl_context or _ssl.create_default_context()) if scheme == "https" else None
        if self.client is None:
            self.client = ControlClient(
                host,
                port,
                self.store.machine_key,
                self.node_key(),
                self.disco,
                server_key=self.pin,
                ssl=tls,
                server_hostname=host if tls else None,
            )
        self.client.node = self.node_key()
        if self.pin is not None and not self._pin_checked:
            await check_pinned_key(prefs.control_url, host, port, tls, self.pin)
            self._pin_checked = True
        await self.client.connect()
        return self.client

    def node_key(self) -> NodePrivate:
        key = self.store.node_key
        if key is None:
            key = self.store.new_node_key()
        return key

    async def drop(self) -> None:
        """Closes the connection; the next `connected()` dials again."""
        if self.client is not None:
            await self.client.close()
            self.client.server_key = self.pin  # unpinned: ask GET /key again on the next dial
        self._pin_checked = False  # pinned: compare it with GET /key again, for a clear error if it changed
