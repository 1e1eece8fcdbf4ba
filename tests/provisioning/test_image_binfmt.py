"""qemu-user registration for the from-scratch images and the arm64 chroot."""

import os

import pytest

from meshlet_provision.image import binfmt
from meshlet_provision.image.errors import ImageError


def test_an_architecture_meshlet_does_not_build_is_refused_by_name() -> None:
    with pytest.raises(ImageError, match="'riscv64'.*arm64 and armhf"):
        binfmt.ensure_binfmt("riscv64")


@pytest.mark.skipif(os.geteuid() != 0, reason="registering qemu-user needs root")
@pytest.mark.parametrize("arch", sorted(binfmt.QEMU_ARCH))
def test_registration_is_there_afterwards_and_repeating_it_is_harmless(arch: str) -> None:
    if not os.path.exists("/usr/lib/binfmt.d/qemu-%s.conf" % binfmt.QEMU_ARCH[arch]):
        pytest.skip("qemu-user-static is not installed (./dev setup installs it)")
    binfmt.ensure_binfmt(arch)
    binfmt.ensure_binfmt(arch)
    assert (binfmt.BINFMT_DIR / ("qemu-" + binfmt.QEMU_ARCH[arch])).exists()
