"""Failed logins counted in the database, so every web process (gunicorn workers, replicas) sees them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fracture.models import LoginFailure


class LoginLimits:
    """At most `per_user` failures per (username, address) and `per_address` per address within `window`."""

    def __init__(self, per_user: int = 5, per_address: int = 50, window_s: int = 300) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = timedelta(seconds=window_s)

    def retry_after(self, session: Session, username: str, address: str) -> int | None:
        """Seconds until another attempt is allowed, or None if one is allowed now."""
        since = datetime.now(UTC) - self.window
        recent = select(func.count(LoginFailure.id), func.min(LoginFailure.created_at)).where(
            LoginFailure.created_at > since
        )
        for stmt, cap in (
            (recent.where(LoginFailure.username == username, LoginFailure.address == address), self.per_user),
            (recent.where(LoginFailure.address == address), self.per_address),
        ):
            count, oldest = session.execute(stmt).one()
            if count >= cap:
                return max(1, int((oldest + self.window - datetime.now(UTC)).total_seconds()) + 1)
        return None

    def failed(self, session: Session, username: str, address: str) -> None:
        now = datetime.now(UTC)
        session.execute(delete(LoginFailure).where(LoginFailure.created_at < now - self.window))
        session.add(LoginFailure(username=username[:64], address=address[:64], created_at=now))
        session.commit()

    def succeeded(self, session: Session, username: str, address: str) -> None:
        session.execute(
            delete(LoginFailure).where(LoginFailure.username == username, LoginFailure.address == address)
        )
        session.commit()
