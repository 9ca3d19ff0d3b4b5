"""Standard Webhooks from a transactional outbox (DESIGN §14).

``events``: the event types and :func:`events.emit`, which writes the event and its deliveries in the
caller's transaction; ``signing``: ``whsec_`` secrets and the ``webhook-*`` headers; ``delivery``: the jobs
that send (one per delivery, right after the request) and the cron that claims whatever is due by lease;
``service``: endpoint management, the delivery log and replay, for the CLI and the management API.
"""
