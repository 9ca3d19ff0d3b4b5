"""Audit log: who did what in the organization, in words, filtered and exported as CSV (issue 11)."""

from policy import Feature, Permission
from portal.web.registry import Section, Widget
from widgets.audit_log.controller import AuditLogController

WIDGET = Widget(
    key="audit_log",
    title="Audit log",
    url="/ui/organization/audit-log",
    section=Section.ORGANIZATION,
    description="Who did what in the organization, and when; export it as CSV.",
    read_permission=Permission.AUDIT_READ,
    feature=Feature.AUDIT_LOG,
    handlers=(AuditLogController,),
)
