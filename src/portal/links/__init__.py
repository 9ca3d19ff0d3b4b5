"""Admin portal links (issue 14, DESIGN §18): one-time setup links that give an IT admin outside the app a
session limited to one organization and one intent, with no account."""

from portal.links.routes import HANDLERS

__all__ = ["HANDLERS"]
