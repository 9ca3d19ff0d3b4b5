"""Single sign-on: an organization's SAML 2.0 and OIDC connections, their setup guides, Test connection and
Enforce SSO (DESIGN §15). The sign-in itself lives in :mod:`portal.sso`.

The metadata refresh and certificate warnings run as cron jobs (``jobs.py``).
"""

from policy import Feature, Permission
from portal.web.registry import Section, Widget
from widgets.sso import jobs  # noqa: F401 - registers refresh_sso_metadata and warn_sso_certificates
from widgets.sso.controller import SsoController

WIDGET = Widget(
    key="sso",
    title="Single sign-on",
    url="/ui/organization/sso",
    section=Section.ORGANIZATION,
    description="Let your people sign in through your identity provider (SAML or OpenID Connect).",
    read_permission=Permission.SSO_READ,
    manage_permissions=(Permission.SSO_MANAGE,),
    feature=Feature.SSO,
    handlers=(SsoController,),
)
