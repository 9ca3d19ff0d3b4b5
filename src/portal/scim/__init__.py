"""The SCIM 2.0 server (DESIGN §16): directories of customer organizations, their Users and Groups."""

from portal.scim.routes import HANDLERS

__all__ = ["HANDLERS"]
