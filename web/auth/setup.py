"""Wire access control into an app: session cookie settings, the guard, CSRF, headers, login pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, g
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFProtect

from fracture.config import Settings
from web.auth.headers import security_headers
from web.auth.identity import authenticate
from web.auth.secret import secret_key

csrf = CSRFProtect()


def auth_config(settings: Settings, keyed: bool = False) -> dict[str, Any]:
    """Flask keys for sessions, CSRF and login limits; `create_app(config)` may override any of them."""
    return {
        **({} if keyed else {"SECRET_KEY": secret_key(settings)}),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Off by default for the embedded http://127.0.0.1 mode; set SESSION_COOKIE_SECURE=1 behind https.
        "SESSION_COOKIE_SECURE": settings.session_cookie_secure,
        "PERMANENT_SESSION_LIFETIME": timedelta(hours=12),
        # The guard decides which requests need a token: those authenticated by the session cookie.
        "WTF_CSRF_CHECK_DEFAULT": False,
        # The token lives as long as the session: an upload page left open an hour still submits.
        "WTF_CSRF_TIME_LIMIT": None,
        "LOGIN_MAX_FAILURES": 5,
        "LOGIN_MAX_FAILURES_PER_ADDRESS": 50,
        "LOGIN_WINDOW_S": 300,
    }


def init_auth(app: Flask) -> None:
    from web.auth.pages import bp

    csrf.init_app(app)
    app.register_blueprint(bp)
    app.before_request(_guard)
    app.after_request(security_headers)
    app.context_processor(lambda: {"current_user": g.get("user")})


def _guard() -> ResponseReturnValue | None:
    """Authenticate first, then demand a CSRF token on state-changing requests that rode on the cookie."""
    refused = authenticate()
    if refused is not None:
        return refused
    if g.auth != "token":
        # A Bearer token is never sent by a browser on its own, so only cookie-borne requests can be forged.
        csrf.protect()
    return None
