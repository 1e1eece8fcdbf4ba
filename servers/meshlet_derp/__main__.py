"""`python -m meshlet_derp`: the same as the `meshlet-derp` command."""

from .cli import main

raise SystemExit(main())
