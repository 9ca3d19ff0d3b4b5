"""The management REST API at ``/api/v1`` (DESIGN §13)."""

from portal.api import app

HANDLERS = app.HANDLERS
