"""The wheel layout promise of STYLE §4.2, checked without building anything.

One distribution, six top-level import names, each in its wrapper folder:

    meshlet            core/meshlet
    meshlet_agent      agent/meshlet_agent
    meshlet_control    servers/meshlet_control
    meshlet_derp       servers/meshlet_derp
    meshlet_provision  provisioning/meshlet_provision
    meshlet_host       host/meshlet_host (what the CPython shells share: state files, systemd)

and nothing generic (`tests`, `tools`, `agent`, `core`, `servers`, `host`) importable.

The import checks run in a child interpreter started with `-I` from an empty
directory: `python -m pytest` (what ./dev runs) puts the current directory on
sys.path, which would make `tests` and `tools` importable *in this process*
whatever the install does. The child sees exactly what the installed package
(the editable .pth, or a wheel) provides.
"""

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "meshlet"

PACKAGES = {
    "meshlet": "core/meshlet",
    "meshlet_agent": "agent/meshlet_agent",
    "meshlet_control": "servers/meshlet_control",
    "meshlet_derp": "servers/meshlet_derp",
    "meshlet_provision": "provisioning/meshlet_provision",
    "meshlet_host": "host/meshlet_host",
}
NOT_IMPORTABLE = ("tests", "tools", "agent", "core", "servers", "provisioning", "host", "firmware", "meshlet_testing")
WRAPPERS = {"core", "agent", "servers", "provisioning", "host"}

_PROBE = r"""
import importlib.util, json, sys
out = {"found": {}, "path": sys.path, "prefixes": [sys.prefix, sys.base_prefix, sys.exec_prefix]}
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name)
    out["found"][name] = None if spec is None else {
        "origin": spec.origin,
        "locations": list(spec.submodule_search_locations or []),
    }
print(json.dumps(out))
"""


def _probe(tmp_path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, *PACKAGES, *NOT_IMPORTABLE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_wheel_maps_exactly_the_package_folders():
    with open(ROOT / "pyproject.toml", "rb") as f:
        conf = tomllib.load(f)
    packages = conf["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert sorted(packages) == sorted(PACKAGES.values())


def test_import_names_come_from_their_folders_and_nothing_generic_is_importable(tmp_path):
    got = _probe(tmp_path)
    problems = []
    for name, folder in PACKAGES.items():
        spec = got["found"][name]
        want = ROOT / folder / "__init__.py"
        if spec is None:
            problems.append("%s is not importable (is the project installed? pip install -e .)" % name)
        elif spec["origin"] is None or Path(spec["origin"]).resolve() != want:
            where = spec["origin"] or spec["locations"]
            problems.append("%s comes from %s, expected %s" % (name, where, want))
    for name in NOT_IMPORTABLE:
        spec = got["found"][name]
        if spec is not None:
            problems.append("%s is importable (%s)" % (name, spec["origin"] or spec["locations"]))
    # Entries the install added: inside the repository but not the interpreter's own (a venv in .venv/).
    prefixes = [Path(p).resolve() for p in got["prefixes"]]
    inside = sorted(
        {
            p
            for p in got["path"]
            if p
            and Path(p).resolve().is_relative_to(ROOT)
            and not any(Path(p).resolve().is_relative_to(x) for x in prefixes)
        }
    )
    allowed = sorted(str(ROOT / w) for w in WRAPPERS)
    for p in inside:
        if str(Path(p).resolve()) not in allowed:
            problems.append("sys.path holds %s; only the wrapper folders may be there" % p)
    assert not problems, "\n".join(problems)


def test_wrapper_folders_hold_only_their_packages():
    # STYLE §4.2: an editable install puts each wrapper folder on sys.path, so
    # a stray conftest.py or main.py there would become a top-level module.
    expected = {}
    for folder in PACKAGES.values():
        wrapper, pkg = folder.split("/")
        expected.setdefault(wrapper, set()).add(pkg)
    stray = []
    for wrapper, pkgs in sorted(expected.items()):
        for entry in sorted((ROOT / wrapper).iterdir()):
            name = entry.name
            if name in pkgs or name.startswith(".") or name == "__pycache__":
                continue
            if name.upper().startswith("README"):
                continue
            stray.append("%s/%s" % (wrapper, name))
    assert not stray, "only the package (and a README) may sit in a wrapper folder: %s" % ", ".join(stray)


def test_every_core_module_and_every_package_has_a_docstring():
    files = sorted(CORE.rglob("*.py"))
    files += [ROOT / f / "__init__.py" for f in PACKAGES.values() if f != "core/meshlet"]
    missing = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        doc = ast.get_docstring(tree)
        if not doc or not doc.strip():
            missing.append(path.relative_to(ROOT).as_posix())
    assert not missing, "module docstring missing (STYLE §5.6): %s" % ", ".join(missing)
