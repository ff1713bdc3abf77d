"""`python -m sipserver`: the same as the `sipserver` command."""

from sipserver.cli import main

raise SystemExit(main())
