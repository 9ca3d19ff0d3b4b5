"""Domains: an organization's domains, verified by a DNS TXT record (DESIGN §6).

The checks run as background jobs (``jobs.py``, registered when the registry imports this package): on a schedule, and at once on "Verify now".
"""

from policy import Feature, Permission
from portal.web.registry import Section, Widget
from widgets.domains import jobs  # noqa: F401 - registers verify_domain and check_pending_domains
from widgets.domains.controller import DomainsController

WIDGET = Widget(
    key="domains",
    title="Domains",
    url="/ui/organization/domains",
    section=Section.ORGANIZATION,
    description="Prove your organization owns its domains with a DNS TXT record.",
    read_permission=Permission.SETTINGS_READ,
    manage_permissions=(Permission.SETTINGS_MANAGE,),
    feature=Feature.DOMAIN_VERIFICATION,
    handlers=(DomainsController,),
)
