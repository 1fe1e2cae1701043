"""The users API (admins only): list, create, change (admin, active), revoke tokens, reset a password."""

from __future__ import annotations

from typing import Any

from flask.typing import ResponseReturnValue

from fracture.accounts import AccountError
from fracture.models import User
from web.context import db
from web.openapi import ApiBlueprint
from web.users import schemas as s
from web.users import service

bp = ApiBlueprint("users_api", __name__, url_prefix="/api",
                  description="User accounts (admins only); each change is recorded in the audit log.")


@bp.errorhandler(AccountError)
def _refused(exc: AccountError) -> ResponseReturnValue:
    db().rollback()
    return {"error": f"{str(exc)[:1].upper()}{str(exc)[1:]}."}, 400


@bp.get("/users")
@bp.response(200, s.UserListSchema)
def api_list() -> dict[str, Any]:
    """Every user, by name, with their role, state and live tokens (admins)."""
    return {"users": service.all_users()}


@bp.post("/users")
@bp.arguments(s.CreateUserBody)
@bp.response(201, s.CreatedUserSchema)
def api_create(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Create a user with a random password and an API token, both shown only in this answer (admins)."""
    creds = service.create(body["username"], bool(body.get("admin")))
    return {"user": service.get_user(creds.username), "password": creds.password, "token": creds.token}, 201


@bp.get("/users/<username>")
@bp.response(200, s.UserSchema)
def api_get(username: str) -> User:
    """One user (admins)."""
    return service.get_user(username)


@bp.patch("/users/<username>")
@bp.arguments(s.ChangeUserBody)
@bp.response(200, s.UserSchema)
def api_change(body: dict[str, Any], username: str) -> User:
    """Make a user an admin or not, disable or enable them (admins); 400 for yourself or the last enabled admin."""
    return service.change(username, admin=body.get("admin"), active=body.get("active"))


@bp.post("/users/<username>/revoke-tokens")
@bp.response(200, s.RevokedSchema)
def api_revoke(username: str) -> dict[str, Any]:
    """Revoke every live API token of a user (admins)."""
    user, count = service.revoke_tokens(username)
    return {"user": user, "revoked": count}


@bp.post("/users/<username>/reset-password")
@bp.response(200, s.PasswordSchema)
def api_reset_password(username: str) -> dict[str, Any]:
    """Give a user a new random password, shown only in this answer; their browser sessions end (admins)."""
    return {"username": username, "password": service.reset_password(username)}
