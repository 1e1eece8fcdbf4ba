"""Shared fixtures of the QEMU tier (docs/qemu.md): tools/qemu on the path, the cache, logs.

Every test here is marked `qemu` and `slow`; they need root, QEMU
(qemu-system-arm, qemu-user-static, mmdebstrap) and a cache directory
outside the repository (MESHLET_IMAGE_CACHE, default
/var/tmp/meshlet-images) where images and chroots are built once per
recipe. They skip with the reason (and the fix) when something is missing;
run them with `./dev test tests/qemu` or
`.venv/bin/python -m pytest tests/qemu -m qemu -p no:cacheprovider`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
for sub in ("tools/qemu", "tools/lab"):
    path = str(REPO / sub)
    if path not in sys.path:
        sys.path.insert(0, path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.qemu)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def image_cache() -> Path:
    from cache import cache_dir

    if os.geteuid() != 0:
        pytest.skip("the QEMU tier needs root (mmdebstrap --mode=root, chroot, netns): run as root")
    return cache_dir()


@pytest.fixture(scope="session")
def qemu_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Console and QEMU logs of every guest of the session (printed on failure by the tests)."""
    yield tmp_path_factory.mktemp("qemu-logs")
