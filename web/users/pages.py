"""The users page (admins only): every account with its role, state and tokens, a form to add one, and per user
the buttons to make them an admin or not, disable or enable them, revoke their tokens and reset their password.

The risky buttons ask first (web/confirm.py). A new account's password and token, and a reset password, are shown
once, in the answer to the POST itself (never carried in a redirect: the session cookie is signed, not secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, flash, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from fracture.accounts import AccountError
from fracture.models import User
from web.auth import current_user
from web.confirm import asked, confirm_page
from web.context import db
from web.users import service
from web.users.schemas import user_json

bp = Blueprint("users", __name__)


@bp.errorhandler(AccountError)
def _refused(exc: AccountError) -> ResponseReturnValue:
    db().rollback()
    flash(f"Nothing was changed: {exc}.", "error")
    return redirect(url_for("users.index"))


def _questions(user: User) -> dict[str, str]:
    """What each risky button of `user`'s row asks before it acts."""
    name = user.username
    return {
        "admin_on": f"Make {name} an admin?\nThey may then manage users, retrain, schedule, promote models and "
                    "see every job.",
        "admin_off": f"Remove {name}'s admin rights?\nThey keep their account and their own jobs.",
        "disable": f"Disable {name}?\nThey can no longer log in, and their API tokens and open sessions stop "
                   "working until they are enabled again.",
        "revoke": f"Revoke every API token of {name}?\nPrograms using them are refused from now on; a new token "
                  "comes from `fracture users create-token`.",
        "reset": f"Reset {name}'s password?\nA new random password is shown once; their browser sessions end.",
    }


def _page(revealed: Mapping[str, Any] | None = None, status: int = 200) -> ResponseReturnValue:
    users = service.all_users()
    rows = [{**user_json(u), "questions": _questions(u)} for u in users]
    response = make_response(render_template("users.html", rows=rows, revealed=revealed,
                                             me=current_user().username), status)
    if revealed is not None:
        response.headers["Cache-Control"] = "no-store"  # a password is on it: never kept by the browser's cache
    return response


@bp.get("/users")
def index() -> ResponseReturnValue:
    return _page()


@bp.post("/users")
def create_page() -> ResponseReturnValue:
    form = request.form
    creds = service.create(form.get("username") or "", form.get("admin") == "1")
    flash(f"User {creds.username} created{' as an admin' if form.get('admin') == '1' else ''}.", "ok")
    return _page({"username": creds.username, "password": creds.password, "token": creds.token,
                  "what": "new account"}, 201)


@bp.post("/users/<username>/admin")
def admin_page(username: str) -> ResponseReturnValue:
    admin = request.form.get("admin") == "1"
    user = service.get_user(username)
    if asked():
        question = _questions(user)["admin_on" if admin else "admin_off"]
        label = f"Make {user.username} an admin" if admin else f"Remove {user.username}'s admin rights"
        return confirm_page(question, label, url_for("users.index"))
    service.set_admin(user.username, admin)
    flash(f"{user.username} is {'now' if admin else 'no longer'} an admin.", "ok")
    return redirect(url_for("users.index"))


@bp.post("/users/<username>/active")
def active_page(username: str) -> ResponseReturnValue:
    active = request.form.get("active") == "1"
    user = service.get_user(username)
    if asked() and not active:
        return confirm_page(_questions(user)["disable"], f"Disable {user.username}", url_for("users.index"))
    service.set_active(user.username, active)
    flash(f"{user.username} is {'enabled' if active else 'disabled'}.", "ok")
    return redirect(url_for("users.index"))


@bp.post("/users/<username>/revoke-tokens")
def revoke_page(username: str) -> ResponseReturnValue:
    user = service.get_user(username)
    if asked():
        return confirm_page(_questions(user)["revoke"], f"Revoke {user.username}'s tokens", url_for("users.index"))
    _, count = service.revoke_tokens(user.username)
    flash(f"Revoked {count} API token{'' if count == 1 else 's'} of {user.username}.", "ok")
    return redirect(url_for("users.index"))


@bp.post("/users/<username>/reset-password")
def reset_page(username: str) -> ResponseReturnValue:
    user = service.get_user(username)
    if asked():
        return confirm_page(_questions(user)["reset"], f"Reset {user.username}'s password", url_for("users.index"))
    password = service.reset_password(user.username)
    flash(f"The password of {user.username} was reset; their browser sessions have ended.", "ok")
    return _page({"username": user.username, "password": password, "what": "new password"})
