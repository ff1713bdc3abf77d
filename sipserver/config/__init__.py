"""The configuration in one package. `schema` declares every key once (type, default,
meaning, check) as frozen dataclasses, with the values some keys choose from in `choices`
and the checks in `checks`: these three are pure, and the core sees only them. `loader`
reads TOML into them (`reader` tracks keys and lines, `host` supplies this machine's
defaults); `reference` writes docs/configuration.md from the schema."""
