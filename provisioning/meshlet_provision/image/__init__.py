"""Flashable, pre-enrolled images for the boards in boards/ (docs/provisioning.md, "Images").

build_image(board, out_path, *, base=IMG | from_scratch=True, enrollment=..., ...) -> ImageResult
"""

from .build import BootFiles, ImageResult, build_image, default_cache_dir
from .cloudinit import WifiConfig
from .enrollment import Enrollment
from .errors import ImageError, PartitionTableError, ToolError

__all__ = [
    "BootFiles",
    "Enrollment",
    "ImageError",
    "ImageResult",
    "PartitionTableError",
    "ToolError",
    "WifiConfig",
    "build_image",
    "default_cache_dir",
]
