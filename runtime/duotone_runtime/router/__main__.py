from duotone_runtime.router.cli import main

raise SystemExit(main())
