"""The DashScope API key, re-read when its file changes (rotation without restart).

Kubernetes updates a mounted Secret in place; :class:`ApiKeySource` notices a
new file content (checked at most every ``check_interval`` seconds, by mtime
and size, so the hot path never touches the disk) and hands out the new key.
"""

from __future__ import annotations

import logging
import os
import time

from sidecar.config import Secret

__all__ = ["ApiKeySource"]

log = logging.getLogger(__name__)


class ApiKeySource:
    """The current API key: fixed, or from a file that may change."""

    def __init__(
        self, key: Secret | None, path: str | None = None, *, check_interval: float = 1.0
    ) -> None:
        self._key = key
        self._path = path
        self._check_interval = check_interval
        self._checked_at = 0.0
        self._stamp = self._file_stamp()

    def __repr__(self) -> str:
        return f"<ApiKeySource {'file ' + self._path if self._path else 'fixed'}>"

    def current(self) -> str:
        """Return the key to send (empty if none)."""
        return self._key.reveal() if self._key else ""

    def refresh(self) -> bool:
        """Re-read the key file if it changed; return True if the key is new."""
        now = time.monotonic()
        if self._path is None or now - self._checked_at < self._check_interval:
            return False
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            with open(self._path, encoding="utf-8") as key_file:
                value = key_file.read().strip()
        except OSError as exc:
            log.warning("cannot re-read the API key file %s: %s", self._path, exc.strerror)
            return False
        if not value or (self._key is not None and Secret(value) == self._key):
            return False
        self._key = Secret(value)
        log.info("the API key file %s changed: using the new key", self._path)
        return True

    def _file_stamp(self) -> tuple[float, int] | None:
        if self._path is None:
            return None
        try:
            info = os.stat(self._path)
        except OSError:
            return None
        return (info.st_mtime, info.st_size)
