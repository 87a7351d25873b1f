from infisical_sync.cli import main

raise SystemExit(main())
