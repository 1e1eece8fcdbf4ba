"""Typed errors of the image builder; each message names the problem and the fix."""


class ImageError(Exception):
    """Base of everything `meshlet-provision image` reports to the user."""


class PartitionTableError(ImageError):
    """The disk image's partition table is missing, damaged or not one we can provision."""


class ToolError(ImageError):
    """An external tool (mtools, e2fsprogs, mmdebstrap, pip) failed or is missing."""
