from moe_prefetch.cli import main

raise SystemExit(main())
