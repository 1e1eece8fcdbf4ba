"""`python -m meshlet_agent ...` is the `meshlet` command."""

import sys

from .cli import main

sys.exit(main())
