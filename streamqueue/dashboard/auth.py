"""Who may use the dashboard: a token or basic-auth credentials, never from the command line.

Secrets come from an environment variable or a file and are compared in
constant time (``hmac.compare_digest``). A browser that logged in with the
token gets a signed session cookie (HttpOnly, SameSite=Strict), never the
token itself; scripts may send ``Authorization: Bearer TOKEN``. The CSRF
token every form carries is derived from a per-process key, so a page from
another origin, which cannot read ours, cannot forge it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streamqueue.errors import ConfigurationError

Scheme = Literal["token", "basic"]
SECRET_ENV = "STREAMQUEUE_DASHBOARD_SECRET"  # noqa: S105 (a variable name, not a secret)
SESSION_COOKIE = "streamqueue_session"
SESSION_SECONDS = 12 * 3600
#: Shorter secrets are refused: a token must not be guessable.
MIN_SECRET = 12


def load_secret(path: str | None, environ: Mapping[str, str]) -> str:
    """The secret from ``path`` (first line) or else ``STREAMQUEUE_DASHBOARD_SECRET``."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the dashboard secret file {path}: "
                                     f"{exc.strerror}") from None
        secret = text[0].strip() if text else ""
        where = f"the file {path}"
    else:
        secret = environ.get(SECRET_ENV, "").strip()
        where = SECRET_ENV
    if not secret:
        raise ConfigurationError(f"--auth needs a secret: {where} is empty or unset")
    return secret


@dataclass(frozen=True)
class Authenticator:
    """Checks requests against one secret: a token, or ``user:password`` for basic auth."""

    scheme: Scheme
    secret: str
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def __post_init__(self) -> None:
        if self.scheme == "basic" and ":" not in self.secret:
            raise ConfigurationError("--auth basic needs the secret as user:password")
        if len(self.secret) < MIN_SECRET:
            raise ConfigurationError(f"the dashboard secret is too short: at least {MIN_SECRET} "
                                     "characters")

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a log line
        return f"Authenticator(scheme={self.scheme!r})"

    def allows(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """True for a valid Authorization header, or (token) a valid session cookie."""
        header = headers.get("authorization", "")
        kind, _, value = header.partition(" ")
        if self.scheme == "basic":
            return kind.lower() == "basic" and self._basic_matches(value.strip())
        if kind.lower() == "bearer" and _same(value.strip(), self.secret):
            return True
        return self.session_valid(cookies.get(SESSION_COOKIE, ""))

    def token_matches(self, token: str) -> bool:
        return self.scheme == "token" and _same(token, self.secret)

    def new_session(self) -> str:
        issued = str(int(self.clock()))
        return f"{issued}.{self._sign('session:' + issued)}"

    def session_valid(self, cookie: str) -> bool:
        issued, _, signature = cookie.partition(".")
        if not issued.isdigit() or not _same(signature, self._sign("session:" + issued)):
            return False
        return 0 <= self.clock() - int(issued) <= SESSION_SECONDS

    def _basic_matches(self, encoded: str) -> bool:
        try:
            given = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return _same(given, self.secret)

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()


class CsrfGuard:
    """One CSRF token per process, compared in constant time."""

    def __init__(self, key: bytes | None = None) -> None:
        key = key or os.urandom(32)
        self.token = hmac.new(key, b"csrf", hashlib.sha256).hexdigest()

    def valid(self, submitted: str | None) -> bool:
        return submitted is not None and _same(submitted, self.token)


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when the browser says the request came from another origin (``Origin`` header)."""
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
