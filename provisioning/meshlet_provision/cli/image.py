"""`meshlet-provision image`: a flashable image for one board that joins the tailnet on first boot.

    meshlet-provision image --board rpi-4b --base raspios-lite-arm64.img.xz --out pi.img \\
        --enroll-code 'meshlet://enroll?...' [--hostname pi-kitchen] [--wifi-ssid S --wifi-psk-file F]
    meshlet-provision image --board qemu-virt-arm64 --from-scratch --out guest.img \\
        --authkey KEY --login-server URL [--lab] [--json]

Progress goes to stderr (percent for copies and decompression); --json prints the result
(image path, boot files for QEMU, partitions, timings) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "image",
        help="build a flashable image that joins the tailnet on first boot",
        description="Build a flashable image for a board: a vendor image (--base) or a Debian image built "
        "here (--from-scratch), with meshlet installed and the enrollment on the boot partition.",
    )
    p.add_argument("--board", required=True, help="board id (meshlet-provision boards)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", metavar="IMG", help="vendor image (.img or .img.xz) to add meshlet to")
    src.add_argument(
        "--from-scratch", action="store_true", help="build a Debian bookworm image with mmdebstrap (cached)"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="OUT.img",
        help="where to write the image (created 0600: it holds the key)",
    )
    p.add_argument("--enroll-code", metavar="CODE", help="enrollment code (meshlet-control keys create --qr)")
    p.add_argument("--authkey", metavar="KEY", help="pre-auth key, or file:PATH (with --login-server)")
    p.add_argument(
        "--login-server", metavar="URL", help="control server URL; alone: interactive login on first boot"
    )
    p.add_argument("--hostname", help="the node's hostname (default: the board id)")
    p.add_argument("--wifi-ssid", metavar="S", help="Wi-Fi network for cloud-init's network-config")
    p.add_argument("--wifi-psk-file", metavar="F", help="file holding the Wi-Fi passphrase (first line)")
    p.add_argument("--wifi-country", metavar="CC", default="", help="Wi-Fi regulatory domain, e.g. DE")
    p.add_argument(
        "--cache", metavar="DIR", help="image cache (default $MESHLET_IMAGE_CACHE or /var/tmp/meshlet-images)"
    )
    p.add_argument(
        "--lab", action="store_true", help="test image: root autologin on the serial console, lab SSH key"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=run)


def _read_secret(value: str, what: str) -> str:
    from ..image import ImageError

    if not value.startswith("file:"):
        return value
    path = Path(value[len("file:") :])
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ImageError("cannot read %s from %s: %s" % (what, path, e.strerror)) from None
    if not lines or not lines[0].strip():
        raise ImageError("%s is empty: put the %s on its first line" % (path, what))
    return lines[0].strip()


def run(args: argparse.Namespace) -> int:
    from ..image import Enrollment, ImageError, WifiConfig, build_image
    from ..image.progress import to_stderr

    try:
        if args.enroll_code:
            if args.authkey:
                raise ImageError("give --enroll-code or --authkey, not both (the code carries its own key)")
            enrollment = Enrollment.from_code(args.enroll_code)
            if args.login_server and args.login_server.rstrip("/") != enrollment.login_server:
                raise ImageError(
                    "--login-server disagrees with the enrollment code's server %s; drop one"
                    % enrollment.login_server
                )
        elif args.login_server:
            key = _read_secret(args.authkey, "auth key") if args.authkey else None
            enrollment = Enrollment(args.login_server.rstrip("/"), key)
        else:
            raise ImageError(
                "give --enroll-code CODE, or --login-server URL (with --authkey KEY for an unattended join)"
            )
        wifi = None
        if args.wifi_ssid or args.wifi_psk_file:
            if not (args.wifi_ssid and args.wifi_psk_file):
                raise ImageError("Wi-Fi needs both --wifi-ssid and --wifi-psk-file")
            wifi = WifiConfig(
                args.wifi_ssid,
                _read_secret("file:" + args.wifi_psk_file, "Wi-Fi passphrase"),
                args.wifi_country.upper(),
            )
        result = build_image(
            args.board,
            args.out,
            base=args.base,
            from_scratch=args.from_scratch,
            enrollment=enrollment,
            hostname=args.hostname,
            wifi=wifi,
            cache_dir=args.cache,
            progress=to_stderr,
            lab=args.lab,
        )
    except ImageError as e:
        print("meshlet-provision image: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("meshlet-provision image: interrupted; no image written", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(
            "%s: %s image for %s, hostname %s, %.1f s%s"
            % (
                result.path,
                "from-scratch" if args.from_scratch else "base",
                args.board,
                result.hostname,
                result.seconds,
                " (base image cached)" if result.cache_hit else "",
            )
        )
        if result.boot_files.kernel:
            print(
                "  boot files for QEMU: %s"
                % ", ".join(
                    str(p)
                    for p in (result.boot_files.kernel, result.boot_files.initrd, result.boot_files.dtb)
                    if p
                )
            )
    return 0
