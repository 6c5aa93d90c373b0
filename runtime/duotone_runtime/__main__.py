"""`python -m duotone_runtime` runs the `duotone-runtime` command."""

from duotone_runtime.cli import main

raise SystemExit(main())
