"""meshlet and its dependencies as wheels for the board, and "installing" them into an image.

The image is never booted or chrooted to install meshlet: the wheels are unpacked straight
into /usr/local/lib/python3.X/dist-packages of the root filesystem (debugfs), with console
scripts in /usr/local/bin.  That is what pip does for a wheel, minus bytecode (Python writes
it on first import).  Wheels come from this checkout (`pip wheel --no-deps`) and from PyPI
(`pip download --only-binary=:all: --platform ... --python-version ...`), cached by what
was asked for.

armhf: PyPI has no armv7 wheels for PyNaCl, cryptography and zstandard.  For those the
image uses Debian's python3-nacl, python3-cryptography and python3-zstandard: already in
the from-scratch image (bookworm: 1.5, 38 and 0.20, older than pyproject's minimums but
what meshlet's calls need), and on a base image installed by meshlet-firstboot with apt
when missing (that first boot needs the network, which enrollment needs anyway).
"""

from __future__ import annotations

import configparser
import email.parser
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError, ToolError
from .ext4 import Ext4Edit
from .progress import Progress

REPO_ROOT = Path(__file__).resolve().parents[3]
SOURCE_DIRS = (
    "core/meshlet",
    "agent/meshlet_agent",
    "servers",
    "provisioning/meshlet_provision",
    "host/meshlet_host",
)

# Debian arch -> the pip platforms whose wheels run there (glibc 2.36 on bookworm).
PLATFORMS = {
    "arm64": ["manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64", "linux_aarch64"],
    "armhf": ["manylinux2014_armv7l", "manylinux_2_28_armv7l", "manylinux_2_31_armv7l", "linux_armv7l"],
}
# Distributions without wheels for an arch, and the Debian packages used instead.
FROM_DEBIAN = {
    "armhf": {
        "pynacl": "python3-nacl",
        "cryptography": "python3-cryptography",
        "zstandard": "python3-zstandard",
    },
}


@dataclass(frozen=True)
class Wheelhouse:
    wheels: tuple[Path, ...]
    apt_packages: tuple[str, ...]  # what meshlet-firstboot installs if the image lacks it


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, check=False
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-6:]
        raise ToolError("pip failed while %s: %s" % (what, " | ".join(tail)))


def _source_hash(root: Path) -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "README.md"):
        p = root / name
        if p.exists():
            h.update(p.read_bytes())
    for d in SOURCE_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def meshlet_wheel(cache_dir: Path, progress: Progress, root: Path = REPO_ROOT) -> Path:
    """The meshlet wheel of this checkout, rebuilt only when the source changed."""
    if not (root / "pyproject.toml").exists():
        raise ImageError(
            "meshlet-provision image builds meshlet from its source checkout, and %s has no pyproject.toml; run it from a git checkout"
            % root
        )
    out = cache_dir / "meshlet-wheel" / _source_hash(root)
    found = sorted(out.glob("meshlet-*.whl"))
    if found:
        return found[-1]
    progress("building the meshlet wheel from %s" % root)
    out.mkdir(parents=True, exist_ok=True)
    _pip(["wheel", "--no-deps", "-q", "-w", str(out), str(root)], "building the meshlet wheel")
    found = sorted(out.glob("meshlet-*.whl"))
    if not found:
        raise ToolError("pip wheel produced no meshlet wheel in %s" % out)
    return found[-1]


def requirements(wheel: Path) -> list[str]:
    """Requires-Dist of a wheel, without extras-only requirements."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    return [r.split(";")[0].strip() for r in msg.get_all("Requires-Dist") or [] if "extra ==" not in r]


def _dist_name(req: str) -> str:
    m = re.match(r"^[A-Za-z0-9._-]+", req)
    return re.sub(r"[-_.]+", "-", m.group(0)).lower() if m else req


def wheelhouse(arch: str, python: str, cache_dir: Path, progress: Progress) -> Wheelhouse:
    """meshlet + dependency wheels for a Debian arch and a Python version ("3.11")."""
    if arch not in PLATFORMS:
        raise ImageError("no wheels for architecture %r: meshlet images are arm64 or armhf" % arch)
    own = meshlet_wheel(cache_dir, progress)
    debian = FROM_DEBIAN.get(arch, {})
    reqs = [r for r in requirements(own) if _dist_name(r) not in {d.replace("_", "-") for d in debian}]
    key = hashlib.sha256(json.dumps([arch, python, sorted(reqs)]).encode()).hexdigest()[:16]
    out = cache_dir / "wheels" / ("%s-py%s-%s" % (arch, python, key))
    done = out / "complete"
    if not done.exists():
        progress(
            "downloading %d dependencies as %s wheels for Python %s (pip download)"
            % (len(reqs), arch, python)
        )
        out.mkdir(parents=True, exist_ok=True)
        plat = [a for p in PLATFORMS[arch] for a in ("--platform", p)]
        _pip(
            [
                "download",
                "-q",
                "--only-binary=:all:",
                *plat,
                "--python-version",
                python,
                "--implementation",
                "cp",
                "-d",
                str(out),
                *reqs,
            ],
            "downloading wheels for %s (is PyPI reachable?)" % arch,
        )
        done.write_text("\n".join(reqs) + "\n")
    deps = tuple(sorted(out.glob("*.whl")))
    return Wheelhouse((own,) + deps, tuple(sorted(debian.values())))


def install(edit: Ext4Edit, wheels: tuple[Path, ...], python: str) -> int:
    """Queue the unpacked wheels into the root filesystem edit; returns the number of files."""
    site = "/usr/local/lib/python%s/dist-packages" % python
    count = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            scripts: dict[str, str] = {}
            for info in z.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                dest = _destination(name, site)
                if dest is None:
                    continue
                data = z.read(info)
                mode = (
                    0o755
                    if (info.external_attr >> 16) & 0o111 or dest.startswith("/usr/local/bin/")
                    else 0o644
                )
                if dest.startswith("/usr/local/bin/") and data.startswith(b"#!python"):
                    data = b"#!/usr/bin/python3" + data[len(b"#!python") :]
                if name.endswith(".dist-info/entry_points.txt"):
                    scripts = _console_scripts(data.decode())
                edit.write(dest, data, mode)
                count += 1
            distinfo = next(
                (n.split("/")[0] for n in z.namelist() if n.split("/")[0].endswith(".dist-info")), None
            )
            if distinfo:
                edit.write("%s/%s/INSTALLER" % (site, distinfo), b"meshlet-provision\n")
            for script, target in scripts.items():
                module, _, func = target.partition(":")
                body = (
                    "#!/usr/bin/python3\n# Installed by meshlet-provision image from %s.\n"
                    'import sys\nfrom %s import %s\n\nif __name__ == "__main__":\n    sys.exit(%s())\n'
                    % (wheel.name, module.strip(), func.strip().split(".")[0], func.strip())
                )
                edit.write("/usr/local/bin/" + script, body.encode(), 0o755)
                count += 1
    return count


def _destination(name: str, site: str) -> str | None:
    top, _, rest = name.partition("/")
    if top.endswith(".data"):
        kind, _, path = rest.partition("/")
        if kind in ("purelib", "platlib"):
            return "%s/%s" % (site, path)
        if kind == "scripts":
            return "/usr/local/bin/" + path
        if kind == "data":
            return "/usr/local/" + path
        return None
    return "%s/%s" % (site, name)


def _console_scripts(text: str) -> dict[str, str]:
    cp = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return dict(cp.items("console_scripts")) if cp.has_section("console_scripts") else {}
