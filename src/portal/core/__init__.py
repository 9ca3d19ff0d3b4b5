"""The host's foundation: settings, the database (engines, tables, migrations), ids, the clock, mail and
domain-name rules. Everything else in the portal builds on this; ``core`` imports nothing of the web layer,
the sign-in flows or the protocols."""
