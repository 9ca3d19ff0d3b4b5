"""Background jobs on arq (DESIGN §7). Job families arrive with the issues that need them."""
