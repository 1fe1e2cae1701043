"""What the users page and API share: every action is for admins, changes the user through fracture.accounts (which
records it in the audit log under the admin's name) and commits.

An admin cannot remove their own admin rights nor disable themselves (another admin must), and nobody can remove
or disable the last enabled admin (fracture.accounts refuses): either would lock the web out of user management.
"""

from __future__ import annotations

from flask import abort
from sqlalchemy import select

from fracture import accounts
from fracture.accounts import AccountError, Credentials
from fracture.models import User
from web.auth import current_user, require_admin
from web.context import db


def all_users() -> list[User]:
    require_admin("manage users")
    return list(db().scalars(select(User).order_by(User.username)))


def get_user(username: str) -> User:
    """The user `username` (admins only); 404 when there is none."""
    require_admin("manage users")
    user = accounts.find_user(db(), username)
    if user is None:
        abort(404, description=f"There is no user named {username!r}.")
    return user


def create(username: str, admin: bool) -> Credentials:
    """Add a user with a random password and a first API token (both returned in clear, once)."""
    require_admin("create users")
    creds = accounts.create_user(db(), username.strip(), admin=admin, actor=current_user().username)
    db().commit()
    return creds


def _set_admin(user: User, admin: bool) -> None:
    if not admin and user.id == current_user().id and user.is_admin:
        raise AccountError("you cannot remove your own admin rights: ask another admin to do it")
    accounts.set_admin(db(), user.username, admin, actor=current_user().username)


def _set_active(user: User, active: bool) -> None:
    if not active and user.id == current_user().id:
        raise AccountError("you cannot disable yourself: ask another admin to do it")
    accounts.set_active(db(), user.username, active, actor=current_user().username)


def set_admin(username: str, admin: bool) -> User:
    """Make `username` an admin or an ordinary user; AccountError for oneself or the last enabled admin."""
    return change(username, admin=admin)


def set_active(username: str, active: bool) -> User:
    """Enable or disable `username`; AccountError for oneself or the last enabled admin."""
    return change(username, active=active)


def revoke_tokens(username: str) -> tuple[User, int]:
    """Revoke every live API token of `username`; (the user, how many were revoked)."""
    user = get_user(username)
    count = accounts.revoke_tokens(db(), user.username, actor=current_user().username)
    db().commit()
    return user, count


def reset_password(username: str) -> str:
    """Give `username` a new random password (returned in clear, once); their browser sessions end."""
    user = get_user(username)
    password = accounts.set_password(db(), user.username, actor=current_user().username)
    db().commit()
    return password


def change(username: str, admin: bool | None = None, active: bool | None = None) -> User:
    """Set admin and/or active (each left as it is when None), both or neither: the callers' error handlers roll
    back a refused change."""
    user = get_user(username)
    if admin is not None:
        _set_admin(user, admin)
    if active is not None:
        _set_active(user, active)
    db().commit()
    return user
