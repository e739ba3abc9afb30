"""Who calls, and whether the route table lets them: users, API keys, JWT bearer tokens,
the login rate limit and the first admin.

Identities live in ``<prefix>.identities`` (the registry; every API process of a registry
sees the same): ``user:<name>`` holds a user's argon2 hash, ``key:<id>`` an API key's
SHA-256 (a key is 32 random bytes: a slow hash adds nothing), ``jwt-secret`` the signing key
when ``DATAFLOW_JWT_SECRET`` does not give one. A request's identity is looked up in that
view on every request, so a deleted or disabled user and a revoked key are refused at once
(tokens they hold included).

Tokens are HS256 JWTs (PyJWT) with ``sub``, ``role``, ``iat`` and ``exp`` required; only
HS256 is accepted, so ``alg: none`` and algorithm confusion fail. An API key is
``dfk_<id>_<secret>``, sent as ``X-API-Key`` or ``Authorization: Bearer``.

An external identity provider (OIDC) plugs in by its JWKS: a bearer token signed with an
asymmetric algorithm (RS*/PS*/ES*) is verified against the provider's published keys, its
``iss`` and ``aud`` checked, and its role read from one claim (a role name, or a list whose
highest DataFlow role counts). Such a token is never checked against the HS256 secret, nor
an HS256 token against a provider's key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ops.api._errors import ApiError
from ops.api._registry import Record, Registry

log = logging.getLogger("dataflow.api.auth")

Role = Literal["viewer", "operator", "admin"]
#: who may call a route: ``open`` (anyone), a least role, or ``metrics`` (open, or viewer
#: when ``DATAFLOW_API_METRICS_AUTH=1``)
Access = Literal["open", "metrics", "viewer", "operator", "admin"]
RANKS: dict[str, int] = {"viewer": 1, "operator": 2, "admin": 3}
ALGORITHM = "HS256"
_KEY_PREFIX = "dfk_"
_HASHER = PasswordHasher()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Identity:
    """The caller of one request."""

    kind: Literal["user", "key", "oidc"]
    #: the user's name, or the key's name
    name: str
    role: Role
    #: the key's id (kind ``key``)
    key_id: str | None = None

    @property
    def who(self) -> str:
        return self.name if self.kind == "user" else f"{self.kind}:{self.name}"

    def allows(self, role: str) -> bool:
        return RANKS[self.role] >= RANKS[role]


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


class LoginLimiter:
    """At most ``attempts`` failed logins per user, and four times that per address, in
    ``window_s``; then 429 until the oldest failure leaves the window."""

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, at: float) -> deque[float]:
        seen = self._failures.setdefault(key, deque())
        while seen and seen[0] <= at - self.window_s:
            seen.popleft()
        return seen

    def check(self, user: str, address: str) -> None:
        at = time.monotonic()
        with self._lock:
            for key, most in ((f"user:{user}", self.attempts),
                              (f"addr:{address}", 4 * self.attempts)):
                seen = self._recent(key, at)
                if len(seen) >= most:
                    wait = max(1, int(seen[0] + self.window_s - at) + 1)
                    raise ApiError(429, "too_many_attempts",
                                   f"too many failed logins; try again in {wait} s")

    def failed(self, user: str, address: str) -> None:
        at = time.monotonic()
        with self._lock:
            for key in (f"user:{user}", f"addr:{address}"):
                self._recent(key, at).append(at)


#: the algorithms a provider's token may use (never HS*: its key is public)
OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True)
class Oidc:
    """An external identity provider: where its keys are, who it is, who tokens are for."""

    jwks_url: str
    issuer: str
    audience: str
    role_claim: str = "role"

    @functools.cached_property
    def keys(self) -> jwt.PyJWKClient:
        return jwt.PyJWKClient(self.jwks_url, cache_keys=True, lifespan=300, timeout=5)

    def identify(self, credential: str) -> Identity:
        try:
            key = self.keys.get_signing_key_from_jwt(credential)
            claims = jwt.decode(credential, key.key, algorithms=list(OIDC_ALGORITHMS),
                                audience=self.audience, issuer=self.issuer,
                                options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired") from None
        except jwt.PyJWKClientError as exc:
            log.warning("OIDC keys: %s", exc)
            raise unauthorized("the token's signing key is not the provider's") from None
        except jwt.InvalidTokenError:
            raise unauthorized("the token is not valid") from None
        given = claims.get(self.role_claim)
        names = given if isinstance(given, list) else [given]
        roles: list[Role] = [r for r in ("admin", "operator", "viewer") if r in names]
        if not roles:
            raise ApiError(403, "forbidden", f"the token's claim {self.role_claim!r} names no "
                           "DataFlow role (viewer, operator, admin)")
        return Identity("oidc", str(claims["sub"]), roles[0])  # the highest it names


class Identities:
    """Users, API keys and the signing key over ``<prefix>.identities``."""

    def __init__(self, registry: Registry, *, secret: str | None, ttl_s: int,
                 oidc: Oidc | None = None) -> None:
        self.oidc = oidc
        self.registry = registry
        self.topic = registry.topics.identities
        self.ttl_s = ttl_s
        self._given_secret = secret
        #: held by a check-then-write (a duplicate name, the last admin)
        self.lock = threading.Lock()

    # -------------------------------------------------------------- first start

    def bootstrap(self, admin_password: str | None) -> None:
        """The signing key, and user ``admin`` when no admin exists (blocking)."""
        self.registry.catch_up()
        if self._given_secret is None and self.registry.get(self.topic, "jwt-secret") is None:
            self.registry.put(self.topic, "jwt-secret",
                              {"kind": "secret", "value": secrets.token_urlsafe(48)})
        if any(r.get("kind") == "user" and r["role"] == "admin" and not r.get("disabled")
               for r in self.registry.items(self.topic).values()):
            return
        if admin_password:
            self.put_user("admin", "admin", admin_password)
            log.info("created user admin (password from DATAFLOW_ADMIN_PASSWORD)")
            return
        password = secrets.token_urlsafe(18)
        self.put_user("admin", "admin", password)
        log.warning("created user admin with the one-time password %s (shown only now: "
                    "change it, or set DATAFLOW_ADMIN_PASSWORD before the first start)",
                    password)

    @property
    def secret(self) -> str:
        if self._given_secret is not None:
            return self._given_secret
        rec = self.registry.get(self.topic, "jwt-secret")
        if rec is None:
            raise ApiError(503, "not_ready", "the signing key is not loaded yet")
        return str(rec["value"])

    # -------------------------------------------------------------- users and keys

    def user(self, name: str) -> Record | None:
        return self.registry.get(self.topic, f"user:{name}")

    @staticmethod
    def hash(password: str) -> str:
        return _HASHER.hash(password)

    def put_user(self, name: str, role: str, password: str) -> Record:
        rec: Record = {"kind": "user", "name": name, "role": role,
                       "password_hash": self.hash(password), "disabled": False,
                       "created_at": now()}
        self.registry.put(self.topic, f"user:{name}", rec)
        return rec

    def set_user(self, rec: Record) -> None:
        self.registry.put(self.topic, f"user:{rec['name']}", rec)

    def delete_user(self, name: str) -> None:
        self.registry.put(self.topic, f"user:{name}", None)

    def create_key(self, name: str, role: str) -> tuple[Record, str]:
        """A new key: its record and the key itself (shown once, kept nowhere)."""
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        rec: Record = {"kind": "key", "id": key_id, "name": name, "role": role,
                       "hash": hashlib.sha256(secret.encode()).hexdigest(), "revoked": False,
                       "created_at": now()}
        self.registry.put(self.topic, f"key:{key_id}", rec)
        return rec, f"{_KEY_PREFIX}{key_id}_{secret}"

    def key(self, key_id: str) -> Record | None:
        return self.registry.get(self.topic, f"key:{key_id}")

    def set_key(self, rec: Record | None, key_id: str) -> None:
        self.registry.put(self.topic, f"key:{key_id}", rec)

    def of_kind(self, kind: str) -> list[Record]:
        return [r for r in self.registry.items(self.topic).values() if r.get("kind") == kind]

    # -------------------------------------------------------------- checks

    def login(self, username: str, password: str) -> tuple[Identity, str]:
        """A token for a user whose password matches (blocking: argon2 is slow)."""
        rec = self.user(username)
        try:
            if rec is None or rec.get("disabled"):
                # the same work for an unknown user, so timing does not tell
                _HASHER.verify(_dummy_hash(), password)
                raise VerificationError
            _HASHER.verify(rec["password_hash"], password)
        except (VerificationError, InvalidHashError):
            raise unauthorized("wrong username or password") from None
        who = Identity("user", username, rec["role"])
        return who, self.token(who)

    def token(self, who: Identity) -> str:
        at = int(time.time())
        return jwt.encode({"sub": who.name, "role": who.role, "iat": at,
                           "exp": at + self.ttl_s}, self.secret, algorithm=ALGORITHM)

    def identify(self, authorization: str | None, api_key: str | None) -> Identity:
        """The caller of a request from its headers; 401 when absent or not valid."""
        credential = api_key
        if credential is None and authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise unauthorized("Authorization must be 'Bearer <token or API key>'")
            credential = value.strip()
        if credential is None:
            raise unauthorized("credentials required (Authorization: Bearer <token>, or "
                               "X-API-Key)")
        if credential.startswith(_KEY_PREFIX):
            return self._by_key(credential)
        if self.oidc is not None and _algorithm(credential) in OIDC_ALGORITHMS:
            return self.oidc.identify(credential)
        return self._by_token(credential)

    def _by_key(self, credential: str) -> Identity:
        key_id, _, secret = credential.removeprefix(_KEY_PREFIX).partition("_")
        rec = self.key(key_id) if key_id else None
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if rec is None or not hmac.compare_digest(digest, rec["hash"]):
            raise unauthorized("unknown API key")
        if rec.get("revoked"):
            raise unauthorized("the API key is revoked")
        return Identity("key", rec["name"], rec["role"], key_id=key_id)

    def _by_token(self, credential: str) -> Identity:
        try:
            claims = jwt.decode(credential, self.secret, algorithms=[ALGORITHM],
                                options={"require": ["exp", "iat", "sub", "role"]})
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired") from None
        except jwt.InvalidTokenError:
            raise unauthorized("the token is not valid") from None
        rec = self.user(str(claims["sub"]))
        if rec is None or rec.get("disabled"):
            raise unauthorized("the token's user no longer exists or is disabled")
        # the user's role now, never more than the token says
        role = min((rec["role"], claims["role"]), key=lambda r: RANKS.get(r, 0))
        if role not in RANKS:
            raise unauthorized("the token is not valid")
        return Identity("user", rec["name"], role)


def _algorithm(token: str) -> str | None:
    try:
        return str(jwt.get_unverified_header(token).get("alg"))
    except jwt.InvalidTokenError:
        return None


@functools.cache
def _dummy_hash() -> str:
    return _HASHER.hash(secrets.token_urlsafe(16))
