"""`python -m duotone_router` runs the `duotone-router` command."""

from duotone_router.cli import main

raise SystemExit(main())
