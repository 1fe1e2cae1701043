"""Who is asking: a Bearer token (API clients) or the session cookie (browsers); what they may see."""

from __future__ import annotations

from typing import Any

from flask import abort, g, jsonify, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import Select

from fracture.accounts import session_key, user_for_token
from fracture.models import Job, User
from web.context import db, machine_request

# Reachable without an account: the login form, the health probe, the stylesheet, scripts, the site's icon and the
# API's description (its document, reference page and that page's assets).
PUBLIC_ENDPOINTS = frozenset({"auth.login", "system_api.health", "static", "system.favicon",
                              "api-docs.openapi_json", "docs.page", "docs.static"})
# Routes that check their own credentials, not a user's: /metrics takes METRICS_TOKEN (or this machine only).
OWN_CREDENTIALS = frozenset({"system.metrics"})
LOGIN_HINT = "send 'Authorization: Bearer <token>' (`fracture users create NAME` prints one) or log in"


def current_user() -> User:
    """The authenticated user of this request (the guard has already refused anonymous requests)."""
    user: User = g.user
    return user


def sees(job: Job | None) -> bool:
    """Whether the current user may see `job`: their own, or any job for an admin."""
    user = current_user()
    return job is not None and (user.is_admin or job.owner_id == user.id)


def job_or_404(job_id: str) -> Job:
    """The job `job_id` if the current user may see it; someone else's job answers exactly like a missing one."""
    job = db().get(Job, job_id)
    if job is None or not sees(job):
        abort(404, description=f"no job with id {job_id}")
    return job


def visible(stmt: Select[Any]) -> Select[Any]:
    """Restrict a query of jobs to those the current user may see."""
    user = current_user()
    return stmt if user.is_admin else stmt.where(Job.owner_id == user.id)


def require_admin(action: str) -> None:
    if not current_user().is_admin:
        abort(403, description=f"Only an administrator may {action}.")


def authenticate() -> ResponseReturnValue | None:
    """Set g.user and g.auth ("token" or "session"); answer 401 / redirect to login when there is none."""
    g.user, g.auth = None, None
    if request.endpoint in OWN_CREDENTIALS:
        return None
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        user = user_for_token(db(), token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            # A bad token never falls back to the cookie: the client asked to be judged by its token.
            return _unauthorized("the API token is invalid or revoked")
        g.user, g.auth = user, "token"
        return None
    uid = session.get("uid")
    if uid is not None:
        user = db().get(User, uid)
        if user is not None and user.active and session.get("key") == session_key(user):
            g.user, g.auth = user, "session"
            return None
        session.clear()  # a deleted or disabled user, or a changed password
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None  # None: no such route; the 404/405 says nothing about anyone's data
    return _unauthorized("authentication required")


def _unauthorized(reason: str) -> ResponseReturnValue:
    if machine_request():
        response = jsonify({"error": f"{reason}: {LOGIN_HINT}"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="fracture"'
        return response, 401
    if request.headers.get("Authorization") is not None:
        abort(401, description=f"{reason}.")
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("auth.login", next=target))
