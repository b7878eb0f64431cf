"""MongoDB connection strings: showing them without their secrets.

``redact_uri`` never raises, whatever it is given (a malformed URI is exactly
what ends up in an error message), and errs on the side of hiding too much.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

REDACTED = "***"

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>.*)$", re.DOTALL)
# Options whose values are secrets: a key file's password, an AWS session token
# inside authMechanismProperties (``AWS_SESSION_TOKEN:...``).
_SECRET_OPTION = re.compile(
    r"(?P<key>(?:tlsCertificateKeyFilePassword|sslPEMKeyPassword)=)[^&#\s]*", re.IGNORECASE
)
_SECRET_PROPERTY = re.compile(r"(?P<key>AWS_SESSION_TOKEN(?::|%3A))[^,&#\s]*", re.IGNORECASE)
# A URI inside free text (an exception message, a log line).
_URI_IN_TEXT = re.compile(r"mongodb(?:\+srv)?://[^\s'\"<>]+", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """``uri`` with its password (and secret options) replaced by ``***``.

    The user name stays, so a reader can still tell which account was used::

        >>> redact_uri("mongodb://app:s3cret@db1,db2/?replicaSet=rs0")
        'mongodb://app:***@db1,db2/?replicaSet=rs0'
    """
    match = _SCHEME.match(uri)
    if match is None:
        # Not a URI at all: it may still be a bare "user:password@host".
        return _redact_options(_redact_userinfo(uri, "")) if "@" in uri else _redact_options(uri)
    return _redact_options(_redact_userinfo(match["rest"], match["scheme"]))


def _redact_userinfo(rest: str, scheme: str) -> str:
    # Passwords must be percent-escaped, but a malformed URI may carry a raw
    # "@", "/" or "?", so no separator can be trusted to end the user info:
    # take the last "@". If the options hold one too (appname=a@b), hiding
    # the hosts as well is the safe mistake.
    at = rest.rfind("@")
    if at < 0:
        return scheme + rest
    userinfo, hosts = rest[:at], rest[at + 1:]
    user, sep, _password = userinfo.partition(":")
    if not sep:
        # No password (x.509, Kerberos, or a user name alone).
        return f"{scheme}{userinfo}@{hosts}"
    return f"{scheme}{user}:{REDACTED}@{hosts}"


def _redact_options(text: str) -> str:
    text = _SECRET_OPTION.sub(lambda m: m["key"] + REDACTED, text)
    return _SECRET_PROPERTY.sub(lambda m: m["key"] + REDACTED, text)


def redact_text(text: str, uri: str | None = None) -> str:
    """``text`` with every MongoDB URI in it redacted, and ``uri``'s password too.

    The second part catches a password echoed on its own, outside any URI.
    """
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    if uri:
        for secret in _secrets(uri):
            text = text.replace(secret, REDACTED)
    return text


def _secrets(uri: str) -> list[str]:
    match = _SCHEME.match(uri)
    rest = match["rest"] if match else uri
    at = rest.rfind("@")
    if at < 0:
        return []
    _user, sep, password = rest[:at].partition(":")
    if not sep or not password:
        return []
    # Short passwords would blank out ordinary words; they are still hidden
    # inside URIs by redact_uri.
    candidates = {password, unquote(password)}
    return sorted((c for c in candidates if len(c) >= 4), key=len, reverse=True)
