"""State files: atomic, private, and refused when others can read them."""

import os
import stat

import pytest

from meshlet_host import statefile


def test_write_is_atomic_and_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "node.key")
    statefile.write_atomic(path, b"privkey:old\n")
    statefile.write_atomic(path, b"privkey:new\n")
    assert statefile.read_private(path) == b"privkey:new\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["node.key"]  # no temporary file left behind


def test_missing_file_reads_as_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert statefile.read_private(str(tmp_path / "absent")) is None


def test_a_file_others_can_read_is_refused_with_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "node.key"
    path.write_bytes(b"secret")
    path.chmod(0o644)
    with pytest.raises(statefile.StateFileError, match="chmod 600"):
        statefile.read_private(str(path))


def test_unwritable_directory_names_the_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(statefile.StateFileError, match="cannot write"):
        statefile.write_atomic(str(tmp_path / "no" / "such" / "dir" / "key"), b"x")


def test_ensure_dir_is_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path / "state")
    statefile.ensure_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) & 0o077 == 0
