from sipserver.cli import main

raise SystemExit(main())
