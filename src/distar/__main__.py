from distar.cli import main

raise SystemExit(main())
