"""Portal: self-hosted organization and account widgets, decided by one policy engine."""
