"""The login and logout pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from fracture.accounts import check_password, find_user, session_key
from web.auth.ratelimit import LoginLimits
from web.context import db

bp = Blueprint("auth", __name__)


def _limits() -> LoginLimits:
    cfg = current_app.config
    return LoginLimits(cfg["LOGIN_MAX_FAILURES"], cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"], cfg["LOGIN_WINDOW_S"])


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never `//evil.example` or an absolute URL (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("jobs.upload")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("jobs.upload")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if g.get("user") is not None:
            return redirect(target)
        return render_template("login.html", next=target, username="")
    username = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    address = request.remote_addr or "unknown"
    limits, session_db = _limits(), db()
    wait = limits.retry_after(session_db, username, address)
    if wait is not None:
        minutes = -(-wait // 60)
        message = (f"Too many failed logins for this account from your address. "
                   f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.")
        response = current_app.make_response(
            (render_template("login.html", next=target, username=username, error=message), 429)
        )
        response.headers["Retry-After"] = str(wait)
        return response
    user = find_user(session_db, username)
    if not check_password(session_db, user, password) or user is None:
        limits.failed(session_db, username, address)
        return render_template("login.html", next=target, username=username,
                               error="Wrong username or password."), 401
    limits.succeeded(session_db, username, address)  # also commits a rehashed password
    session.clear()  # a fresh session: nothing chosen before login (fixation) survives it
    session.permanent = True
    session["uid"], session["key"] = user.id, session_key(user)
    return redirect(target)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("auth.login"))
