"""Access control for the web app: who is asking (token or session), what they may see, CSRF, headers."""

from __future__ import annotations

from web.auth.identity import current_user, job_or_404, require_admin, sees, visible
from web.auth.setup import auth_config, init_auth

__all__ = ["auth_config", "current_user", "init_auth", "job_or_404", "require_admin", "sees", "visible"]
