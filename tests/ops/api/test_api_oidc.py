"""An external identity provider (OIDC) plugged in by its JWKS: its tokens are verified
against its published keys, issuer and audience; the role comes from one claim; every
forgery of such a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.ops.api.conftest import ApiProcess

pytestmark = pytest.mark.integration

ISSUER, AUDIENCE = "https://passport.example.test", "dataflow"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_url() -> Iterator[str]:
    """The provider's JWKS document, served on loopback as a provider serves it."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()


def token(groups: Any, *, key: Any = KEY, kid: str = "k1", iss: str = ISSUER,
          aud: str = AUDIENCE, age: int = 0, alg: str = "RS256") -> str:
    now = int(time.time()) - age
    claims = {"sub": "alice", "groups": groups, "iss": iss, "aud": aud, "iat": now,
              "exp": now + 300}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def hs256_by_hand(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """An HS256 token PyJWT would refuse to make (its key is a public key)."""
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")
    signed = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    return (signed + b"." + b64(hmac.new(key, signed, hashlib.sha256).digest())).decode()


def test_provider_tokens_are_verified_and_carry_their_role(
        api_factory: Callable[..., ApiProcess], jwks_url: str) -> None:
    api = api_factory(DATAFLOW_OIDC_JWKS_URL=jwks_url, DATAFLOW_OIDC_ISSUER=ISSUER,
                      DATAFLOW_OIDC_AUDIENCE=AUDIENCE, DATAFLOW_OIDC_ROLE_CLAIM="groups")
    me = api.call("GET", "/api/v1/auth/me", auth=token(["staff", "operator"]))
    assert (me.status, me.json) == (200, {"kind": "oidc", "name": "alice", "role": "operator"})
    viewer = token("viewer")
    assert api.call("GET", "/api/v1/pipelines", auth=viewer).status == 200
    assert api.call("GET", "/api/v1/users", auth=viewer).status == 403       # admin only
    made = api.call("POST", "/api/v1/users", {"name": "bob", "role": "viewer",
                                              "password": "bob-password-1"}, auth=token(["admin"]))
    assert made.status == 201, made.text
    audit = api.call("GET", "/api/v1/audit?limit=500").json["items"]
    assert any(a["who"] == "oidc:alice" and a["action"] == "create_user" for a in audit), audit
    public_pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    confused = hs256_by_hand({"alg": "HS256", "typ": "JWT", "kid": "k1"}, {  # HS256 keyed with
        "sub": "alice", "groups": "admin", "iss": ISSUER, "aud": AUDIENCE,    # the public key
        "iat": int(time.time()), "exp": int(time.time()) + 300}, public_pem)
    refused = {
        "another key": token("admin", key=OTHER), "unknown kid": token("admin", kid="k9"),
        "another issuer": token("admin", iss="https://evil.test"),
        "another audience": token("admin", aud="other-app"),
        "expired": token("admin", age=600), "HS256 with the public key": confused,
    }
    for what, forged in refused.items():
        reply = api.call("GET", "/api/v1/pipelines", auth=forged)
        assert reply.status == 401, (what, reply.status, reply.text)
    no_role = api.call("GET", "/api/v1/pipelines", auth=token(["staff"]))
    assert no_role.status == 403 and "groups" in no_role.json["error"]["message"], no_role.text


def test_provider_settings_go_together() -> None:
    from ops.api._state import ApiSettings

    with pytest.raises(ValueError, match="go together"):
        ApiSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "x:1", "DATAFLOW_OIDC_ISSUER": ISSUER})


def test_a_short_signing_key_is_refused() -> None:
    from ops.api._state import ApiSettings

    env = {"KAFKA_BOOTSTRAP_SERVERS": "x:1"}
    with pytest.raises(ValueError, match="at least 32"):
        ApiSettings.from_env({**env, "DATAFLOW_JWT_SECRET": "k" * 31})
    assert ApiSettings.from_env({**env, "DATAFLOW_JWT_SECRET": "k" * 32}).jwt_secret is not None
