"""`python -m meshlet_control ...` is the `meshlet-control` command."""

import sys

from .cli import main

sys.exit(main())
