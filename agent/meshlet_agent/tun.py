"""The Linux TUN device: open it, address it, route to it, remove it.

A TUN device is a network interface whose packets go to a file descriptor
instead of a wire: every `read` returns one whole IP packet the kernel routed
to the interface, every `write` injects one IP packet as if it had arrived on
it. Opening it is one ioctl on /dev/net/tun (Documentation/networking/tuntap.rst):

    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
    ioctl(fd, TUNSETIFF, struct ifreq { char name[16]; short flags = IFF_TUN | IFF_NO_PI; })

`IFF_NO_PI` drops the 4-byte packet-information header, so reads and writes
are bare IP packets, which is what WireGuard carries. The device is not
persistent: closing the descriptor deletes the interface, and with it its
addresses and routes, so a crashed agent leaves nothing behind.

Addresses, the MTU, the link state and routes are set with `ip` from
iproute2 (a subprocess per change, only at start-up). Netlink could replace it
later; the commands are the same ones an operator would type, which keeps
failures easy to reproduce. Every failure raises `TunError` whose message
names the problem and the fix.
"""

import errno
import fcntl
import logging
import os
import shutil
import struct
import subprocess

from meshlet.wire import format_ip

from .wgconfig import Prefix, format_prefix, mask

log = logging.getLogger("meshlet_agent.tun")

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
IP_TIMEOUT_S = 10
"""Upper bound on one `ip` command; they normally take milliseconds."""


class TunError(Exception):
    """Setting up the TUN device failed; the message names the problem and the fix."""


def check_ifname(name: str) -> None:
    """Raises TunError unless `name` is a valid Linux interface name."""
    if not name or len(name) >= IFNAMSIZ:
        raise TunError(
            "interface name %r is %d characters; Linux allows 1 to 15: pass a shorter --ifname"
            % (name, len(name))
        )
    if name in (".", "..") or any(c in name for c in "/: \t\n") or not name.isprintable():
        raise TunError(
            "interface name %r contains '/', ':' or whitespace;"
            " pass --ifname with letters, digits, '-' or '_'" % name
        )


class Tun:
    """An open TUN interface. `fd` is non-blocking; read and write whole IP packets on it.

    Attributes:
        name: the interface name the kernel gave it (the requested one).
        fd: the file descriptor, or -1 once closed.
        mtu: the MTU set by `configure`.
    """

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd
        self.mtu = 0

    @classmethod
    def open(cls, name: str) -> "Tun":
        """Creates the interface `name` (layer 3, no packet-info header, non-blocking).

        Raises:
            TunError: no /dev/net/tun, not permitted, the name is taken, or a bad name.
        """
        check_ifname(name)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TunError(
                "%s does not exist: load the tun module (`modprobe tun`), or in a container pass the"
                " device in (`--device /dev/net/tun`)" % TUN_PATH
            ) from None
        except PermissionError:
            raise TunError(
                "cannot open %s: permission denied; run as root (or give the program CAP_NET_ADMIN)"
                % TUN_PATH
            ) from None
        except OSError as e:
            raise TunError(
                "cannot open %s: %s; check that the tun module is loaded" % (TUN_PATH, e.strerror)
            ) from None
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EPERM:
                raise TunError(
                    "creating interface %s was refused (EPERM); run as root (or with CAP_NET_ADMIN)" % name
                ) from None
            if e.errno == errno.EBUSY:
                raise TunError(
                    "interface %s already exists and is in use;"
                    " stop whatever owns it or pass another --ifname" % name
                ) from None
            if e.errno == errno.EINVAL:
                raise TunError(
                    "interface %s exists and is not a TUN device; pass another --ifname" % name
                ) from None
            raise TunError("creating interface %s failed: %s" % (name, e.strerror)) from None
        log.debug("tun: opened %s (fd %d)", name, fd)
        return cls(name, fd)

    def configure(self, addresses: list[Prefix], mtu: int, routes: list[Prefix]) -> None:
        """Sets the MTU and addresses, brings the link up and adds a route per prefix.

        Routes that would capture every destination (`/0`) are skipped with a
        warning: they would also capture the tunnel's own UDP packets, which
        needs policy routing that meshlet does not set up yet.

        Raises:
            TunError: an `ip` command failed (the message quotes it and its error).
        """
        _ip("link", "set", "dev", self.name, "mtu", str(mtu))
        self.mtu = mtu
        for ip, bits in addresses:
            family = "-4" if len(ip) == 4 else "-6"
            _ip(family, "address", "add", "%s/%d" % (format_ip(ip), bits), "dev", self.name)
        _ip("link", "set", "dev", self.name, "up")
        # The kernel already routes each address's own network to this interface.
        connected = {(mask(ip, bits), bits) for ip, bits in addresses}
        for prefix in dict.fromkeys(routes):  # de-duplicated, order kept
            ip, bits = prefix
            if bits == 0:
                log.warning(
                    "tun: not adding a route for %s: a default route through the tunnel needs policy routing;"
                    " add it yourself with `ip rule`/`ip route ... table`",
                    format_prefix(prefix),
                )
                continue
            if prefix in connected:
                continue
            family = "-4" if len(ip) == 4 else "-6"
            try:
                _ip(family, "route", "add", format_prefix(prefix), "dev", self.name)
            except TunError as e:
                if "File exists" not in str(e):
                    raise
                log.warning(
                    "tun: a route for %s already exists; left as it is (check `ip route get %s`)",
                    format_prefix(prefix),
                    format_ip(ip),
                )

    def change_addresses(self, remove: list[Prefix], add: list[Prefix]) -> None:
        """Removes and adds addresses on the up interface (a node whose addresses changed).

        Raises:
            TunError: an `ip` command failed.
        """
        for ip, bits in remove:
            family = "-4" if len(ip) == 4 else "-6"
            try:
                _ip(family, "address", "del", "%s/%d" % (format_ip(ip), bits), "dev", self.name)
            except TunError as e:
                if "Cannot assign" not in str(e):
                    raise
        for ip, bits in add:
            family = "-4" if len(ip) == 4 else "-6"
            _ip(family, "address", "add", "%s/%d" % (format_ip(ip), bits), "dev", self.name)

    def close(self) -> None:
        """Closes the descriptor, which deletes the interface with its addresses and routes."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
            log.debug("tun: closed %s", self.name)

    def __enter__(self) -> "Tun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ip(*args: str) -> None:
    """Runs `ip ARGS...`; raises TunError quoting the command and its error."""
    exe = shutil.which("ip")
    if exe is None:
        raise TunError("the `ip` command is missing; install iproute2 (`apt-get install iproute2`)")
    cmd = [exe, *args]
    text = "ip " + " ".join(args)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise TunError(
            "`%s` did not finish in %d s; check the system's network stack" % (text, IP_TIMEOUT_S)
        ) from None
    if res.returncode != 0:
        err = (res.stderr or res.stdout).strip().replace("\n", " ")
        hint = (
            "run as root" if "Operation not permitted" in err else "check the address or route in the config"
        )
        raise TunError("`%s` failed: %s; %s" % (text, err, hint))
    log.debug("tun: %s", text)
