"""`python -m sipserver`: the same as the `sipserver` command."""

from sipserver.commands.main import main

raise SystemExit(main())
