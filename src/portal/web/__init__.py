"""The web layer: the app factory, per-request plumbing (request ids, security headers, error pages), the
session middleware and the one guard, the widget registry, the shell (home, organization chooser), page
rendering, flash messages, forms, and the shared templates and static files.

A request travels: ``http.RequestLogMiddleware`` (id, security headers, log line) ->
``portal.core.db.ConnectionPerRequest`` (one pooled connection for its queries) -> ``guard.SessionMiddleware``
-> ``guard.policy_guard`` -> a controller (``portal.auth`` or a widget) -> its service."""
