"""Secrets out of text: the one place DSNs, keys and tokens are redacted before they are
shown, and the one reading of ``${env:NAME}`` secret references.

Every error message, log line and report that may hold a connection string goes through
:func:`redact`. It masks the password of URIs (``postgresql://user:pw@host/db``,
``mongodb://user:pw@h1,h2/?...``, ``https://key:secret@endpoint``), the value of
password, secret, token and API-key keywords (libpq ``password=`` DSNs, URI query
parameters, ``'password': '...'`` in a mapping's repr, ``sasl.password=...``,
``aws_secret_access_key=...``, ``"access_token": "..."``, ``X-API-Key: ...``) and bearer
tokens (``Bearer ***``); user names, hosts and databases stay readable.

A spec names a secret by environment variable instead of holding it
(``postgresql://loader:${env:PG_PASSWORD}@db/shop``): :func:`resolve_env` fills the
references in, only in the process that connects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from schemas._errors import ConfigError

MASK = "***"

# scheme://user:password@host... (also without the scheme's colon, as a mistyped DSN
# is echoed by libpq); the password runs to the last '@' of the authority, so an
# unencoded '@' in it is masked too
_URI_PASSWORD = re.compile(
    r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.-]*:)?//[^:/?#@\s'\"]*:)"
    r"(?P<secret>[^\s'\"/?#]*?)"
    r"(?=@[^@\s'\"/?#]*(?:[/?#\s'\",;)\]}]|$))"
)
_VALUE = r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&,;'\"}\]]+)"
# password=..., password: ..., 'password': '...', "password":"..." (quoted or bare values)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd)['\"]?\s*[=:]\s*)" + _VALUE, re.IGNORECASE)
# a key that names a secret, with = or as a quoted key (sasl.password=..., aws_secret_access_key=,
# 'secret_access_key': ..., "access_token": ..., X-API-Key: ...); a bare ``field: reason``
# (an error naming the field) is not one
_KEYWORD_SECRET = re.compile(
    r"(?P<head>(?:\b[\w.-]*?(?:password|passwd|pwd|secret|token|api[_-]?key)"
    r"(?:[_-]access[_-]key)?(?:\s*=|['\"]\s*:)|\bX-API-Key:)\s*)" + _VALUE, re.IGNORECASE)

# Authorization: Bearer <token> (a token, not the word in a sentence)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})")

#: ``${env:NAME}``: a secret read from the environment of the process that uses it
ENV_REF = re.compile(r"\$\{env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


def redact(text: str) -> str:
    """``text`` with every password, secret key and token in it replaced by ``***``."""
    if ":" not in text and "=" not in text and "Bearer" not in text:
        return text
    text = _URI_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    text = _BEARER.sub(lambda m: m["head"] + MASK, text)
    text = _KEYWORD_SECRET.sub(lambda m: m["head"] + MASK, text)
    return _KEYWORD_PASSWORD.sub(lambda m: m["head"] + MASK, text)


def resolve_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with every ``${env:NAME}`` replaced by ``env[NAME]`` (default: this
    process's environment); a NAME that is not set is a ``ConfigError`` naming it."""
    if "${env:" not in text:
        return text
    env = os.environ if env is None else env
    missing = sorted({m["name"] for m in ENV_REF.finditer(text) if m["name"] not in env})
    if missing:
        raise ConfigError(f"{', '.join('${env:' + n + '}' for n in missing)}: the environment "
                          f"variable{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                          f"{'are' if len(missing) > 1 else 'is'} not set")
    return ENV_REF.sub(lambda m: env[m["name"]], text)
