"""TOML settings files: typed by the dataclass defaults, typos are errors that name the key."""

import dataclasses

import pytest

from meshlet_host import tomlconfig


class Bad(Exception):
    pass


@dataclasses.dataclass
class Settings:
    port: int = 3340
    http: bool = False
    ratio: float = 1.0
    mesh_with: list[str] = dataclasses.field(default_factory=list)
    hostname: str = ""
    timeout: str = "30s"


def _load(tmp_path, text: str) -> Settings:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.toml"
    path.write_text(text)
    return tomlconfig.load_toml(str(path), Settings(), Bad, frozenset(("timeout",)))


def test_values_and_dashed_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = _load(tmp_path, 'port = 443\nhttp = true\nratio = 2\nmesh-with = "a:1, b:2"\nhostname = "x"\ntimeout = 5\n')
    assert (s.port, s.http, s.ratio, s.mesh_with, s.hostname, s.timeout) == (443, True, 2.0, ["a:1", "b:2"], "x", "5")


def test_unknown_key_names_the_known_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Bad, match="prot is not a setting; known settings: .*port"):
        _load(tmp_path, "prot = 1\n")


def test_wrong_type_names_the_expected_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Bad, match="port should be int"):
        _load(tmp_path, 'port = "443"\n')
    with pytest.raises(Bad, match="http should be bool"):
        _load(tmp_path, "http = 1\n")


def test_missing_file_and_bad_toml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Bad, match="check the --config path"):
        tomlconfig.load_toml(str(tmp_path / "absent.toml"), Settings(), Bad)
    with pytest.raises(Bad, match="not valid TOML"):
        _load(tmp_path, "port = = 1\n")
