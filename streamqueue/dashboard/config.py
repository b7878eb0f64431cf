"""``DashboardConfig``: what one dashboard serves and how; the rule on where it may listen."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from streamqueue.dashboard.auth import Authenticator
from streamqueue.errors import ConfigurationError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class DashboardConfig:
    db: str
    queues: tuple[str, ...] = ()  # empty: every queue in the database
    read_only: bool = False
    auth: Authenticator | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def check_bind(host: str, *, auth: bool, read_only: bool) -> None:
    """Refuse to listen beyond this machine with neither auth nor read-only mode."""
    if is_loopback(host) or auth or read_only:
        return
    raise ConfigurationError(
        f"refusing to listen on {host}: anyone who can reach it could pause queues, cancel "
        "jobs and read every payload. Pass --auth (token or basic, secret from an env "
        "variable or a file) or --read-only, or listen on 127.0.0.1")
