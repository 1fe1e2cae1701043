"""User accounts and API tokens: Argon2id password hashes, tokens kept only as SHA-256, the first admin; the one
module that changes a user (admin on or off, disabled or enabled), each change recorded in the audit log.

`actor` names who asked (a username, or "cli"): the change is then recorded in the audit log (fracture.audit_log);
set-up code and tests that pass none record nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fracture import audit_log
from fracture.config import Settings
from fracture.models import ApiToken, User

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOKEN_PREFIX = "frt_"
FIRST_ADMIN = "admin"
FIRST_ADMIN_FILE = "first-admin.txt"
# Writing last_used_at on every poll would turn reads into writes; a minute's precision is enough.
LAST_USED_PRECISION = timedelta(minutes=1)

_hasher = PasswordHasher()  # argon2-cffi's defaults follow RFC 9106's recommendation (Argon2id)


@cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so a miss costs as long as a wrong password."""
    return _hasher.hash(secrets.token_hex(16))


class AccountError(ValueError):
    """A request about accounts that cannot be done (bad name, duplicate, unknown user)."""


@dataclass(frozen=True)
class Credentials:
    """What a new account's owner is told once: the password and token are never stored in clear."""

    username: str
    password: str
    token: str

    def as_json(self) -> str:
        return json.dumps(asdict(self))


def new_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Tokens are random (256 bits), so a fast unsalted hash is enough to make a stolen table useless."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(session: Session, user: User | None, password: str) -> bool:
    """Whether `password` is `user`'s; upgrades the stored hash when the hasher's parameters changed."""
    if user is None or not user.active:
        _verify(_dummy_hash(), password)
        return False
    if not _verify(user.password_hash, password):
        return False
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
        session.flush()
    return True


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def session_key(user: User) -> str:
    """A fingerprint of the password hash kept in the session cookie: changing the password logs out everywhere."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:32]


def find_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).first()


def get_user(session: Session, username: str) -> User:
    user = find_user(session, username)
    if user is None:
        raise AccountError(f"no user named {username!r}")
    return user


def create_user(session: Session, username: str, *, admin: bool = False, password: str | None = None,
                actor: str | None = None) -> Credentials:
    """Add a user with a random (or given) password and a first API token; return both in clear, once."""
    if not USERNAME.match(username):
        raise AccountError("a username is 1-64 letters, digits or . _ @ - and starts with a letter or digit")
    if find_user(session, username) is not None:
        raise AccountError(f"a user named {username!r} already exists")
    password = password or new_password()
    user = User(username=username, password_hash=hash_password(password), is_admin=admin, active=True)
    session.add(user)
    session.flush()
    if actor is not None:
        audit_log.record(session, actor, "user.create", username, {"admin": admin})
    return Credentials(username, password, issue_token(session, user))


def ensure_service_user(session: Session, username: str) -> User:
    """The user `username`, created on first use as a plain user (not an admin) that nobody signs in as: a random
    password that is never shown and no token (an admin may set a password or issue one later)."""
    user = find_user(session, username)
    if user is not None:
        return user
    if not USERNAME.match(username):
        raise AccountError(f"{username!r} is not a valid username")
    try:
        with session.begin_nested():  # another process may create it at the same moment
            user = User(username=username, password_hash=hash_password(new_password()), is_admin=False, active=True)
            session.add(user)
    except IntegrityError:
        return get_user(session, username)
    audit_log.record(session, audit_log.SYSTEM, "user.create", username, {"admin": False, "service": True})
    return user


def issue_token(session: Session, user: User, name: str = "default", actor: str | None = None) -> str:
    token = new_token()
    row = ApiToken(user_id=user.id, token_hash=token_digest(token), name=name[:64])
    session.add(row)
    session.flush()
    if actor is not None:
        audit_log.record(session, actor, "user.token_create", user.username, {"token_id": row.id, "name": row.name})
    return token


def user_for_token(session: Session, token: str) -> User | None:
    """The active user a live (unrevoked) token belongs to, else None."""
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_digest(token))).first()
    if row is None or row.revoked_at is not None or not row.user.active:
        return None
    now = datetime.now(UTC)
    last = row.last_used_at
    if last is None or now - last > LAST_USED_PRECISION:
        row.last_used_at = now
        session.commit()
    return row.user


def revoke_tokens(session: Session, username: str | None = None, token_id: int | None = None,
                  actor: str | None = None) -> int:
    """Revoke every live token of `username`, or the one token `token_id`; return how many were revoked."""
    stmt = select(ApiToken).where(ApiToken.revoked_at.is_(None))
    if token_id is not None:
        stmt = stmt.where(ApiToken.id == token_id)
    if username is not None:
        stmt = stmt.where(ApiToken.user_id == get_user(session, username).id)
    if token_id is None and username is None:
        raise AccountError("name a user or a token id")
    rows = session.scalars(stmt).all()
    now = datetime.now(UTC)
    for row in rows:
        row.revoked_at = now
    session.flush()
    if actor is not None:
        owners = sorted({row.user.username for row in rows}) or [username or f"token #{token_id}"]
        for owner in owners:
            audit_log.record(session, actor, "user.tokens_revoke", owner,
                             {"token_ids": [row.id for row in rows if row.user.username == owner]})
    return len(rows)


def set_password(session: Session, username: str, password: str | None = None, actor: str | None = None) -> str:
    """Replace `username`'s password (random unless given); their browser sessions end with it."""
    user = get_user(session, username)
    chosen = password or new_password()
    user.password_hash = hash_password(chosen)
    session.flush()
    if actor is not None:
        audit_log.record(session, actor, "user.password_reset", username, {"random": password is None})
    return chosen


def active_admins(session: Session) -> int:
    """How many enabled admins there are."""
    return session.scalar(select(func.count(User.id)).where(User.is_admin.is_(True), User.active.is_(True))) or 0


def _keeps_an_admin(session: Session, user: User, what: str) -> None:
    """Refuse to take the last enabled admin away: nobody could manage users from the web any more."""
    if user.is_admin and user.active and active_admins(session) <= 1:
        raise AccountError(f"{user.username} is the last enabled admin: make another user an admin before {what}")


def set_admin(session: Session, username: str, admin: bool, actor: str | None = None) -> User:
    """Make `username` an admin, or an ordinary user again; AccountError for the last enabled admin."""
    user = get_user(session, username)
    if user.is_admin == admin:
        return user
    if not admin:
        _keeps_an_admin(session, user, "removing their admin rights")
    user.is_admin = admin
    session.flush()
    if actor is not None:
        audit_log.record(session, actor, "user.admin_on" if admin else "user.admin_off", username)
    return user


def set_active(session: Session, username: str, active: bool, actor: str | None = None) -> User:
    """Enable or disable `username`: disabled, they cannot log in and their tokens and sessions stop working (kept,
    so enabling them again restores both); AccountError for the last enabled admin."""
    user = get_user(session, username)
    if user.active == active:
        return user
    if not active:
        _keeps_an_admin(session, user, "disabling them")
    user.active = active
    session.flush()
    if actor is not None:
        audit_log.record(session, actor, "user.enable" if active else "user.disable", username)
    return user


def ensure_first_admin(session: Session, settings: Settings) -> Credentials | None:
    """On an installation without users, create the admin and leave its credentials in a 0600 file."""
    if session.scalar(select(func.count(User.id))):
        return None
    creds = create_user(session, FIRST_ADMIN, admin=True, actor=audit_log.SYSTEM)
    write_private(settings.home / FIRST_ADMIN_FILE, (
        "The first administrator of this installation (shown once on the console too).\n"
        "Change the password with `fracture users set-password admin`, then delete this file.\n"
        f"username: {creds.username}\npassword: {creds.password}\ntoken: {creds.token}\n"
    ))
    return creds


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, created with that mode (never readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
