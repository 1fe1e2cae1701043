"""The audit page (admins): the newest admin actions first, `limit` a page, older pages by `before`."""

from __future__ import annotations

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from fracture import audit_log
from web.audit.schemas import AuditEntrySchema, AuditQuery, audit_page
from web.auth import require_admin
from web.context import db

bp = Blueprint("audit", __name__)


@bp.get("/audit")
def index() -> ResponseReturnValue:
    require_admin("read the audit log")
    try:
        args = AuditQuery().load(request.args.to_dict())
    except ValidationError:
        args = AuditQuery().load({})  # a hand-edited query: show the newest page rather than an error
    limit = args["limit"]
    page = audit_page(audit_log.entries(db(), limit, args.get("before"), args.get("action")), limit)
    return render_template("audit.html", rows=AuditEntrySchema(many=True).dump(page["entries"]), limit=limit,
                           before=args.get("before"), next_before=page["next_before"])
