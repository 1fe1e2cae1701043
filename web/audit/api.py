"""GET /api/audit: the audit log, newest first, a page at a time (admins)."""

from __future__ import annotations

from typing import Any

from fracture import audit_log
from web.audit import schemas as s
from web.auth import require_admin
from web.context import db
from web.openapi import ApiBlueprint

bp = ApiBlueprint("audit_api", __name__, url_prefix="/api",
                  description="The audit log of admin actions (user changes, promotions, rollbacks, datasets, "
                              "schedules).")


@bp.get("/audit")
@bp.arguments(s.AuditQuery, location="query")
@bp.response(200, s.AuditPageSchema)
def api_list(args: dict[str, Any]) -> dict[str, Any]:
    """Admin actions, newest first: `limit` of them, older than `before` (an entry id) when given (admins)."""
    require_admin("read the audit log")
    limit = args["limit"]
    rows = audit_log.entries(db(), limit, args.get("before"), args.get("action"))
    return s.audit_page(rows, limit)
