"""cloud-init NoCloud files for the boot partition: user-data, network-config, meta-data.

Raspberry Pi OS (and Ubuntu's Pi images) read these from the FAT boot partition on first
boot.  They set the host name and the network (Wi-Fi included); the meshlet enrollment is
NOT a runcmd here but meshlet-firstboot.service, so it works the same on images without
cloud-init (the from-scratch ones).  Strings are written as JSON strings, which YAML reads
as double-quoted scalars: no SSID or passphrase can break the document.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import ImageError

_COUNTRY = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class WifiConfig:
    ssid: str
    psk: str
    country: str = ""

    def __post_init__(self) -> None:
        if not 1 <= len(self.ssid.encode()) <= 32:
            raise ImageError("--wifi-ssid must be 1 to 32 bytes")
        ok_hex = len(self.psk) == 64 and all(c in "0123456789abcdefABCDEF" for c in self.psk)
        if not (8 <= len(self.psk) <= 63 or ok_hex) or any(ord(c) < 32 for c in self.psk):
            raise ImageError(
                "the Wi-Fi passphrase must be 8 to 63 printable characters (or 64 hex digits); check --wifi-psk-file"
            )
        if self.country and not _COUNTRY.match(self.country):
            raise ImageError("Wi-Fi country %r: use a two-letter ISO code such as DE or GB" % self.country)

    def __repr__(self) -> str:
        return "WifiConfig(%r, <psk>)" % self.ssid


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def user_data(hostname: str) -> str:
    return (
        "#cloud-config\n"
        "# Written by meshlet-provision image. meshlet joins the tailnet from\n"
        "# meshlet-firstboot.service, with the enrollment in meshlet/ on this partition.\n"
        "hostname: %s\n"
        "manage_etc_hosts: true\n"
        "preserve_hostname: false\n" % _q(hostname)
    )


def network_config(wifi: WifiConfig | None) -> str:
    lines = [
        "# Written by meshlet-provision image (cloud-init network config v2).",
        "network:",
        "  version: 2",
        "  ethernets:",
        "    eth0:",
        "      dhcp4: true",
        "      optional: true",
    ]
    if wifi is not None:
        lines += [
            "  wifis:",
            "    wlan0:",
            "      dhcp4: true",
            "      optional: true",
        ]
        if wifi.country:
            lines.append("      regulatory-domain: %s" % _q(wifi.country))
        lines += [
            "      access-points:",
            "        %s:" % _q(wifi.ssid),
            "          password: %s" % _q(wifi.psk),
        ]
    return "\n".join(lines) + "\n"


def meta_data(hostname: str, instance_id: str) -> str:
    """A new instance-id per image, so cloud-init treats the first boot as a first boot."""
    return "instance-id: %s\nlocal-hostname: %s\n" % (_q(instance_id), _q(hostname))
