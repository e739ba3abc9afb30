"""Passwords out of text: the one place DSNs and URIs are redacted before they are shown.

Every error message, log line and report that may hold a connection string goes through
:func:`redact`. It masks the password of URIs (``postgresql://user:pw@host/db``,
``mongodb://user:pw@h1,h2/?...``, ``https://key:secret@endpoint``) and of ``password=``
keywords (libpq ``key=value`` DSNs, URI query parameters, ``'password': '...'`` in a
mapping's repr); user names, hosts and databases stay readable.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host... (also without the scheme's colon, as a mistyped DSN
# is echoed by libpq); the password runs to the last '@' of the authority, so an
# unencoded '@' in it is masked too
_URI_PASSWORD = re.compile(
    r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*:)?//[^:/?#@\s'\"]*:)"
    r"(?P<secret>[^\s'\"/?#]*?)"
    r"(?=@[^@\s'\"/?#]*(?:[/?#\s'\",;)\]}]|$))"
)
# password=..., password: ..., 'password': '...', "password":"..." (quoted or bare values)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd)['\"]?\s*[=:]\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&,;'\"}\]]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every DSN or URI in it replaced by ``***``."""
    if ":" not in text and "=" not in text:
        return text
    text = _URI_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KEYWORD_PASSWORD.sub(lambda m: m["head"] + MASK, text)
