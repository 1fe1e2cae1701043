"""User accounts for admins: the users page and the /api/users API (create, admin on or off, disable or enable,
revoke tokens, reset a password); every change is recorded in the audit log."""

from web.users import api, pages

PAGES = pages.bp
API = api.bp
