"""The OpenID Provider the app signs its users in with (DESIGN §12)."""

from portal.oidc import provider

HANDLERS = provider.HANDLERS
