"""The key that signs session cookies: from SECRET_KEY, else a random one kept under FRACTURE_HOME."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fracture.config import Settings

# Values shipped as examples: anyone could forge a session with them, so they count as unset.
PLACEHOLDERS = frozenset({"", "dev-only-change-me", "change-me-in-production"})
SECRET_FILE = "secret-key"


def secret_key(settings: Settings) -> str:
    if settings.secret_key not in PLACEHOLDERS:
        return settings.secret_key
    return _stored_key(settings.home / SECRET_FILE)


def _stored_key(path: Path) -> str:
    """Read the installation's key; create it (mode 0600) on first use, racing web processes agree on one."""
    try:
        return path.read_text().strip() or _wait_for(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _wait_for(path)
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def _wait_for(path: Path) -> str:
    """Another process created the file a moment ago and may still be writing 64 characters into it."""
    import time

    for _ in range(50):
        key = path.read_text().strip()
        if len(key) == 64:
            return key
        time.sleep(0.02)
    raise RuntimeError(f"{path} holds no usable key; delete it and restart")
