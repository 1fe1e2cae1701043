"""The audit log of admin actions: who changed a user, promoted or rolled back a model, registered a dataset or
changed a schedule, and when. Written in the same transaction as the change it describes, never edited.

The actor is a username for actions taken on the web or by API, "cli" for the `fracture` command and "trainer"
for the trainer's automatic promotion.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fracture.models import AuditEntry

CLI = "cli"
TRAINER = "trainer"
SYSTEM = "system"
MAX_LIMIT = 200

# The actions recorded (the `action` column), and each as words for the page ({subject}: what it was done to).
ACTIONS = {
    "user.create": "created the user {subject}",
    "user.admin_on": "made {subject} an admin",
    "user.admin_off": "removed {subject}'s admin rights",
    "user.tokens_revoke": "revoked {subject}'s API tokens",
    "user.token_create": "issued an API token to {subject}",
    "user.password_reset": "reset {subject}'s password",
    "user.disable": "disabled the user {subject}",
    "user.enable": "enabled the user {subject}",
    "model.promote": "made {subject} the active model",
    "model.retire": "retired the model {subject}",
    "model.rollback": "rolled the active model back to {subject}",
    "dataset.register": "registered the dataset {subject}",
    "schedule.create": "added the schedule {subject}",
    "schedule.change": "changed the schedule {subject}",
    "schedule.pause": "paused the schedule {subject}",
    "schedule.resume": "resumed the schedule {subject}",
    "schedule.delete": "deleted the schedule {subject}",
}


def record(session: Session, actor: str, action: str, subject: str, details: dict[str, Any] | None = None
           ) -> AuditEntry:
    """Add one entry (flushed, not committed: it commits, or rolls back, with the change it describes)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    entry = AuditEntry(actor=actor[:64], action=action, subject=subject[:255], details=dict(details or {}))
    session.add(entry)
    session.flush()
    return entry


def entries(session: Session, limit: int = 50, before: int | None = None, action: str | None = None
            ) -> list[AuditEntry]:
    """The newest `limit` entries (at most MAX_LIMIT), newest first; older than entry id `before` when given."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(max(1, min(limit, MAX_LIMIT)))
    if before is not None:
        stmt = stmt.where(AuditEntry.id < before)
    if action is not None:
        stmt = stmt.where(AuditEntry.action == action)
    return list(session.scalars(stmt))


def describe(entry: AuditEntry) -> str:
    """What the entry's actor did, in words: "disabled the user bob"."""
    return ACTIONS.get(entry.action, entry.action + " {subject}").replace("{subject}", entry.subject)
