"""Back-channel logout (OIDC Back-Channel Logout 1.0): every client that got tokens in a portal session that
ended receives a signed logout token. ``portal.auth.sessions.ended`` records each ended session; this job
turns those records into deliveries and sends them, retrying failures with backoff. It never runs in a
user's request."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

import httpx
from joserfc import jwt

from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import OidcGrant, OidcLogoutDelivery, SessionEnd
from portal.jobs import JobContext, cron
from portal.oidc import keys, tokens

log = logging.getLogger("portal.oidc.logout")
EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: Attempts before a delivery is given up (logged); the wait doubles from 5 s up to an hour.
MAX_ATTEMPTS = 10
BATCH = 200
TIMEOUT = 5.0


def backoff(attempts: int) -> timedelta:
    """How long to wait after ``attempts`` failed deliveries."""
    return timedelta(seconds=min(3600, 5 * 2 ** max(0, attempts - 1)))


async def logout_token(settings: Settings, client_id: str, alg: str, session_id: str, user_id: str) -> str:
    """The signed logout token: iss, aud, iat, exp, jti, sub, sid and the ``events`` claim; never a nonce."""
    key = await keys.signing_key(settings, alg)
    now = int(clock.utcnow().timestamp())
    claims = {
        "iss": tokens.issuer(settings),
        "aud": client_id,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(16),
        "sub": user_id,
        "sid": session_id,
        "events": {EVENT: {}},
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "logout+jwt"}, claims, key)


async def plan_deliveries() -> int:
    """Turn unprocessed ``session_end`` rows into deliveries (one per client with a back-channel URI) and
    revoke the grants of those sessions; returns how many deliveries were planned."""
    ends = (
        await SessionEnd.select()
        .where(SessionEnd.oidc_processed_at.is_null())
        .order_by(SessionEnd.id)
        .limit(BATCH)
    )
    planned = 0
    for end in ends:
        where = OidcGrant.session_id == end["session_id"]
        if end["organization_id"]:
            where &= OidcGrant.organization_id == end["organization_id"]
        grants = await OidcGrant.select(
            OidcGrant.id,
            OidcGrant.client,
            OidcGrant.code_used_at,
            OidcGrant.client.backchannel_logout_uri.as_alias("uri"),
        ).where(where)
        notify: set[str] = set()
        for grant in grants:
            await tokens.revoke_grant(grant["id"])
            # Clients that got tokens (the code was exchanged) and listen on a back-channel.
            if grant["code_used_at"] is not None and grant["uri"]:
                notify.add(grant["client"])
        existing = {
            row["client"]
            for row in await OidcLogoutDelivery.select(OidcLogoutDelivery.client).where(
                OidcLogoutDelivery.session_id == end["session_id"]
            )
        }
        for client_id in sorted(notify - existing):
            now = clock.utcnow()
            await OidcLogoutDelivery(
                client=client_id,
                session_id=end["session_id"],
                user_id=end["user_id"],
                next_attempt_at=now,
                created_at=now,
            ).save()
            planned += 1
        await SessionEnd.update({SessionEnd.oidc_processed_at: clock.utcnow()}).where(
            SessionEnd.id == end["id"]
        )
    return planned


async def deliver_due(settings: Settings, http: httpx.AsyncClient | None = None) -> dict[str, int]:
    """Send every delivery that is due; counts of ``delivered``, ``retry`` and ``failed``."""
    now = clock.utcnow()
    due = (
        await OidcLogoutDelivery.select(
            *OidcLogoutDelivery.all_columns(),
            OidcLogoutDelivery.client.backchannel_logout_uri.as_alias("uri"),
            OidcLogoutDelivery.client.signing_alg.as_alias("alg"),
        )
        .where(
            OidcLogoutDelivery.delivered_at.is_null()
            & OidcLogoutDelivery.failed_at.is_null()
            & (OidcLogoutDelivery.next_attempt_at <= now)
        )
        .order_by(OidcLogoutDelivery.next_attempt_at)
        .limit(BATCH)
    )
    counts = {"delivered": 0, "retry": 0, "failed": 0}
    if not due:
        return counts
    own = http is None
    client = http or httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
    try:
        for row in due:
            error = await _send(settings, client, row)
            attempts = row["attempts"] + 1
            if error is None:
                await OidcLogoutDelivery.update(
                    {OidcLogoutDelivery.delivered_at: clock.utcnow(), OidcLogoutDelivery.attempts: attempts}
                ).where(OidcLogoutDelivery.id == row["id"])
                counts["delivered"] += 1
                continue
            gave_up = attempts >= MAX_ATTEMPTS or not row["uri"]
            log.warning(
                "back-channel logout to client %s for session %s failed (attempt %d%s): %s",
                row["client"],
                row["session_id"],
                attempts,
                ", giving up" if gave_up else "",
                error,
            )
            values = {
                OidcLogoutDelivery.attempts: attempts,
                OidcLogoutDelivery.last_error: error[:500],
                OidcLogoutDelivery.next_attempt_at: clock.utcnow() + backoff(attempts),
            }
            if gave_up:
                values[OidcLogoutDelivery.failed_at] = clock.utcnow()
            await OidcLogoutDelivery.update(values).where(OidcLogoutDelivery.id == row["id"])  # type: ignore[arg-type]
            counts["failed" if gave_up else "retry"] += 1
    finally:
        if own:
            await client.aclose()
    return counts


async def _send(settings: Settings, http: httpx.AsyncClient, row: dict[str, object]) -> str | None:
    uri = row["uri"]
    if not isinstance(uri, str) or not uri:
        return "the client has no back-channel logout URI any more"
    token = await logout_token(
        settings, str(row["client"]), str(row["alg"]), str(row["session_id"]), str(row["user_id"])
    )
    try:
        response = await http.post(
            uri,
            data={"logout_token": token},
            headers={"Cache-Control": "no-store"},
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


@cron("oidc_backchannel_logout", interval=lambda settings: settings.oidc_logout_interval)
async def backchannel_logout(ctx: JobContext) -> dict[str, int]:
    """Plan deliveries for newly ended sessions, then send what is due (retries included)."""
    planned = await plan_deliveries()
    counts = await deliver_due(ctx.settings)
    return {"planned": planned, **counts}


#: How long finished records (processed session ends, sent or abandoned deliveries, dead grants) are kept.
RETENTION = timedelta(days=7)


@cron("oidc_purge", interval=lambda settings: 3600)
async def purge(ctx: JobContext) -> dict[str, int]:
    """Delete what no longer matters: processed session ends, finished deliveries, grants that can issue
    nothing (revoked, or a code never exchanged) and the refresh tokens with them, after :data:`RETENTION`."""
    cutoff = clock.utcnow() - RETENTION
    ends = await SessionEnd.delete().where(SessionEnd.oidc_processed_at < cutoff).returning(SessionEnd.id)
    deliveries = (
        await OidcLogoutDelivery.delete()
        .where((OidcLogoutDelivery.delivered_at < cutoff) | (OidcLogoutDelivery.failed_at < cutoff))
        .returning(OidcLogoutDelivery.id)
    )
    grants = (
        await OidcGrant.delete()
        .where(
            (OidcGrant.revoked_at < cutoff)
            | (OidcGrant.code_used_at.is_null() & (OidcGrant.code_expires_at < cutoff))
        )
        .returning(OidcGrant.id)
    )
    return {"session_ends": len(ends), "deliveries": len(deliveries), "grants": len(grants)}
