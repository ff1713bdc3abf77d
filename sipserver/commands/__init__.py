"""The `sipserver` command line: `main` parses it and runs `run`, `check-config`, `certs`,
`ping` and `lab` (each of the last three in a module of its own)."""
