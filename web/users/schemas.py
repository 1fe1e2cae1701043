"""The users API's shapes: a user (role, state, live tokens), the bodies that create and change one, and the
answers that carry a password or token shown once."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields as f
from marshmallow.validate import Length

from fracture.models import User
from web.timefmt import Timestamp


class UserSchema(ma.Schema):
    """An account as admins see it; passwords and tokens are never stored in clear, so never shown here."""

    id = f.Integer(required=True)
    username = f.String(required=True)
    admin = f.Boolean(required=True)
    active = f.Boolean(required=True, metadata={"description": "false: disabled (no login; tokens refused)."})
    created_at = Timestamp()
    live_tokens = f.List(f.Dict(), required=True, metadata={
        "description": "The tokens not revoked: id, name, created_at, last_used_at."})
    last_used_at = Timestamp(metadata={"description": "When one of its live tokens was last used (a minute's "
                                                      "precision)."})

    @ma.pre_dump
    def _flatten(self, user: User, **_: Any) -> dict[str, Any]:
        live = [t for t in user.tokens if t.revoked_at is None]
        used = [t.last_used_at for t in live if t.last_used_at is not None]
        return {
            "id": user.id, "username": user.username, "admin": user.is_admin, "active": user.active,
            "created_at": user.created_at, "last_used_at": max(used) if used else None,
            "live_tokens": [{"id": t.id, "name": t.name, "created_at": t.created_at.isoformat(),
                             "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None} for t in live],
        }


def user_json(user: User) -> dict[str, Any]:
    out: dict[str, Any] = UserSchema().dump(user)
    return out


class UserListSchema(ma.Schema):
    users = f.List(f.Nested(UserSchema), required=True)


class CreateUserBody(ma.Schema):
    username = f.String(required=True, validate=Length(1, 64), metadata={
        "description": "1-64 letters, digits or . _ @ -, starting with a letter or digit."})
    admin = f.Boolean(load_default=False)


class CreatedUserSchema(ma.Schema):
    """A new account: its password and first API token, shown only in this answer."""

    user = f.Nested(UserSchema, required=True)
    password = f.String(required=True)
    token = f.String(required=True)


class ChangeUserBody(ma.Schema):
    admin = f.Boolean(metadata={"description": "Make the user an admin, or an ordinary user (never yourself, nor "
                                               "the last enabled admin)."})
    active = f.Boolean(metadata={"description": "false disables the user (never yourself, nor the last enabled "
                                                "admin); true enables them again."})


class RevokedSchema(ma.Schema):
    user = f.Nested(UserSchema, required=True)
    revoked = f.Integer(required=True, metadata={"description": "How many live tokens were revoked."})


class PasswordSchema(ma.Schema):
    """A new random password, shown only in this answer; the user's browser sessions have ended."""

    username = f.String(required=True)
    password = f.String(required=True)
