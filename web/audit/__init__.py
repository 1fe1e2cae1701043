"""The audit log of admin actions (fracture.audit_log): the /audit page and GET /api/audit, for admins."""

from web.audit import api, pages

PAGES = pages.bp
API = api.bp
