"""The audit API's shapes: an entry (who, what, to which thing, when, the particulars) and a page of them."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields as f
from marshmallow.validate import Range

from fracture import audit_log
from fracture.models import MAX_ROW_ID, AuditEntry
from web.openapi import one_of
from web.timefmt import Timestamp


class AuditEntrySchema(ma.Schema):
    id = f.Integer(required=True)
    created_at = Timestamp()
    actor = f.String(required=True, metadata={
        "description": "The admin's username; 'cli' for the fracture command, 'trainer' for an automatic "
                       "promotion, 'system' for the installation's own first admin."})
    action = f.String(required=True, metadata={"enum": sorted(audit_log.ACTIONS)})
    subject = f.String(required=True, metadata={"description": "What it was done to: a username, a model "
                                                               "version, a dataset or a schedule's name."})
    details = f.Dict(required=True)
    text = f.String(required=True, metadata={"description": "The action in words."})

    @ma.pre_dump
    def _flatten(self, entry: AuditEntry, **_: Any) -> dict[str, Any]:
        return {"id": entry.id, "created_at": entry.created_at, "actor": entry.actor, "action": entry.action,
                "subject": entry.subject, "details": entry.details or {}, "text": audit_log.describe(entry)}


class AuditQuery(ma.Schema):
    limit = f.Integer(load_default=50, validate=Range(1, audit_log.MAX_LIMIT),
                      metadata={"description": f"How many entries (1-{audit_log.MAX_LIMIT}, default 50)."})
    before = f.Integer(validate=Range(1, MAX_ROW_ID), metadata={
        "description": "Only entries older than this entry id (the next page: the answer's next_before)."})
    action = f.String(validate=one_of(sorted(audit_log.ACTIONS)), metadata={"description": "Only this action."})


class AuditPageSchema(ma.Schema):
    entries = f.List(f.Nested(AuditEntrySchema), required=True)
    next_before = f.Integer(allow_none=True, required=True, metadata={
        "description": "Pass as `before` for the next (older) page; null when this page is the last."})


def audit_page(rows: list[AuditEntry], limit: int) -> dict[str, Any]:
    """A page of entries and the cursor of the next one (None when fewer than `limit` came back)."""
    return {"entries": rows, "next_before": rows[-1].id if len(rows) == limit and rows else None}
