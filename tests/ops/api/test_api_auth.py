"""Who may call what: every operation of the OpenAPI document with every kind of
credential, answered exactly as the route table's ``access`` says; revocation at once; the
login rate limit; the first admin; the audit log of it all."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from ops.api._auth import LoginLimiter
from ops.api._errors import ApiError
from ops.api._routes import ROUTES
from ops.api._table import Route
from tests.ops.api.conftest import ADMIN_PASSWORD, ApiProcess

pytestmark = pytest.mark.integration

SECRET = "a-test-signing-key-" + "k" * 48  # 64+ bytes: long enough for HS512 too
RANK = {"viewer": 1, "operator": 2, "admin": 3}


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def forged(kind: str) -> str:
    now = int(time.time())
    claims = {"sub": "admin", "role": "admin", "iat": now, "exp": now + 600}
    if kind == "expired":
        return jwt.encode({**claims, "iat": now - 700, "exp": now - 100}, SECRET,
                          algorithm="HS256")
    if kind == "other key":
        return jwt.encode(claims, "another-signing-key-also-32-bytes-long", algorithm="HS256")
    if kind == "HS512":  # the right key, another algorithm
        return jwt.encode(claims, SECRET, algorithm="HS512")
    if kind == "no role":
        return jwt.encode({k: v for k, v in claims.items() if k != "role"}, SECRET,
                          algorithm="HS256")
    assert kind == "alg none"
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def test_a_route_without_an_access_entry_cannot_be_built() -> None:
    with pytest.raises(TypeError, match="access"):
        Route("GET", "/x", ROUTES[0].handler, "x", ROUTES[0].response)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown access"):
        Route("GET", "/x", ROUTES[0].handler, "x", ROUTES[0].response,
              access="guest")  # type: ignore[arg-type]


def test_every_operation_answers_as_the_role_table_says(
        api_factory: Callable[..., ApiProcess]) -> None:
    api = api_factory(DATAFLOW_JWT_SECRET=SECRET)
    for name, role in (("viewer1", "viewer"), ("operator1", "operator")):
        reply = api.call("POST", "/api/v1/users", {"name": name, "role": role,
                                                   "password": f"{name}-password"})
        assert (reply.status, reply.json["role"]) == (201, role), reply.text
        assert "password" not in reply.text
    reply = api.call("POST", "/api/v1/auth/token", {"username": "viewer1",
                                                    "password": "viewer1-password"}, auth=None)
    assert (reply.json["token_type"], reply.json["expires_in"]) == ("bearer", 900)
    assert jwt.decode(reply.json["access_token"], SECRET, algorithms=["HS256"])["role"] == (
        "viewer")
    tokens = {"viewer": api.login("viewer1", "viewer1-password"),
              "operator": api.login("operator1", "operator1-password"), "admin": api.token}
    bad = {"none": None, "bad token": "not-a-token",
           **{k: forged(k) for k in ("expired", "other key", "HS512", "alg none", "no role")}}
    access = {r.operation_id: r.access for r in ROUTES}
    doc = api.call("GET", "/openapi.json", auth=None).json
    walked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            # a new operation must be in the table; the document says the same
            want = access[op["operationId"]]
            assert op["x-dataflow-access"] == want
            url = re.sub(r"{\w+}", "0000", path)
            body = {} if "requestBody" in op else None
            for label, credential in bad.items():
                reply = api.call(method.upper(), url, body, auth=credential)
                expected = 401 if want not in ("open", "metrics") else None
                assert expected is None or reply.status == 401, (method, path, label, reply.text)
                if reply.status == 401:
                    assert reply.json["error"]["code"] == "unauthorized"
                    assert reply.headers["WWW-Authenticate"] == "Bearer"
            for role, token in tokens.items():
                reply = api.call(method.upper(), url, body, auth=token)
                allowed = want in ("open", "metrics") or RANK[role] >= RANK[want]
                if allowed:  # its answer: a 2xx, or its own 4xx for a dummy id or body
                    assert reply.status not in (401, 403) and reply.status < 500, (
                        method, path, role, reply.text)
                else:
                    assert (reply.status, reply.json["error"]["code"]) == (403, "forbidden"), (
                        method, path, role, reply.text)
            walked += 1
    assert walked == len(ROUTES)

    # a viewer reads pipelines and their dead letters' reasons, never a payload
    made = api.call("POST", "/api/v1/pipelines", {"spec": {
        "name": "authz", "source": {"topics": ["authz.in"], "format": "json"}}})
    assert made.status == 201
    listed = api.call("GET", "/api/v1/pipelines", auth=tokens["viewer"])
    assert [p["name"] for p in listed.json["items"]] == ["authz"]

    # an API key works in either header, and a revoked one fails at once
    key = api.call("POST", "/api/v1/keys", {"name": "ci", "role": "operator"}).json
    assert key["key"].startswith("dfk_") and key["revoked"] is False
    me = api.call("GET", "/api/v1/auth/me", headers={"X-API-Key": key["key"]}, auth=None)
    assert me.json == {"kind": "key", "name": "ci", "role": "operator"}
    run = api.call("POST", f"/api/v1/pipelines/{made.json['id']}/stop", auth=key["key"])
    assert run.status == 202
    listed_keys = api.call("GET", "/api/v1/keys").json["items"]
    assert [k["id"] for k in listed_keys] == [key["id"]] and key["key"] not in str(listed_keys)
    assert api.call("POST", f"/api/v1/keys/{key['id']}/revoke").json["revoked"] is True
    reply = api.call("GET", "/api/v1/auth/me", auth=key["key"])
    assert (reply.status, reply.json["error"]["message"]) == (401, "the API key is revoked")

    # a deleted or disabled user's token fails at once
    assert api.call("DELETE", "/api/v1/users/viewer1").json == {"id": "viewer1", "deleted": True}
    assert api.call("GET", "/api/v1/auth/me", auth=tokens["viewer"]).status == 401
    assert api.call("PATCH", "/api/v1/users/operator1", {"password": "operator1-new-pw",
                                                          "role": "admin"}).json["role"] == "admin"
    assert api.call("GET", "/api/v1/users", auth=api.login("operator1", "operator1-new-pw")
                    ).status == 200  # the new role and password at once
    assert api.call("PATCH", "/api/v1/users/operator1", {"disabled": True}).status == 200
    assert api.call("GET", "/api/v1/auth/me", auth=tokens["operator"]).status == 401
    reply = api.call("DELETE", "/api/v1/users/admin")
    assert (reply.status, reply.json["error"]["code"]) == (409, "self")
    reply = api.call("PATCH", "/api/v1/users/admin", {"role": "viewer"})
    assert (reply.status, reply.json["error"]["code"]) == (409, "self")
    root = api.call("POST", "/api/v1/keys", {"name": "root", "role": "admin"}).json["key"]
    reply = api.call("DELETE", "/api/v1/users/admin", auth=root)
    assert (reply.status, reply.json["error"]["code"]) == (409, "last_admin")

    # five wrong passwords for a user: then 429 for that user, even with the right one
    api.call("POST", "/api/v1/users", {"name": "slow", "role": "viewer",
                                       "password": "slow-password"})
    for _ in range(5):
        reply = api.call("POST", "/api/v1/auth/token",
                         {"username": "slow", "password": "guess-1234"}, auth=None)
        assert reply.status == 401
    reply = api.call("POST", "/api/v1/auth/token",
                     {"username": "slow", "password": "slow-password"}, auth=None)
    assert (reply.status, reply.json["error"]["code"]) == (429, "too_many_attempts")
    api.login("admin", ADMIN_PASSWORD)  # another user from the same address still may

    mine = api.call("POST", "/api/v1/pipelines/0000/stop", headers={"X-Request-ID": "req-42"})
    assert (mine.status, mine.headers["X-Request-ID"]) == (404, "req-42")
    audit = api.call("GET", "/api/v1/audit?limit=1000").json
    assert audit["next_cursor"] is None
    logins = [(a["who"], a["status"], a["outcome"]) for a in audit["items"]
              if a["action"] == "issue_token" and a["who"] == "slow"]
    assert logins == [("slow", 401, "denied")] * 5 + [("slow", 429, "denied")]
    denied = [a for a in audit["items"] if a["status"] == 403]
    assert denied and {a["who"] for a in denied} == {"viewer1", "operator1"}
    assert [(a["action"], a["target"], a["status"], a["address"]) for a in audit["items"]
            if a["request_id"] == "req-42"] == [("stop_pipeline", "0000", 404, "127.0.0.1")]
    assert all(re.fullmatch(r"[0-9a-f]{32}", a["request_id"]) for a in audit["items"]
               if a["request_id"] != "req-42")
    text = json.dumps(audit)
    for secret in ("viewer1-password", "slow-password", "guess-1234", ADMIN_PASSWORD,
                   key["key"], api.token):
        assert secret not in text
    page = api.call("GET", "/api/v1/audit?limit=2").json
    assert page["items"] == audit["items"][:2] and page["next_cursor"]
    after = api.call("GET", f"/api/v1/audit?limit=2&cursor={page['next_cursor']}").json
    assert after["items"] == audit["items"][2:4]


def test_the_first_admin_password_is_shown_once(
        api_factory: Callable[..., ApiProcess]) -> None:
    first = api_factory(DATAFLOW_ADMIN_PASSWORD="", login=False)
    found = re.findall(r"created user admin with the one-time password (\S+) ",
                       first.log.read_text())
    assert len(found) == 1
    first.login("admin", found[0])
    first.stop()
    again = api_factory(first.prefix, DATAFLOW_ADMIN_PASSWORD="", login=False,
                        DATAFLOW_API_METRICS_AUTH="1")
    assert "one-time password" not in again.log.read_text()
    token = again.login("admin", found[0])  # the generated secret and the user were kept
    assert again.call("GET", "/metrics", auth=None).status == 401  # metrics behind a token
    assert again.call("GET", "/metrics", auth=token).status == 200


def test_failed_logins_are_limited_per_user_and_per_address() -> None:
    limiter = LoginLimiter(attempts=2, window_s=60)
    for user in ("a", "a", "b", "b", "c", "c", "d", "d"):
        limiter.check(user, "10.0.0.1")
        limiter.failed(user, "10.0.0.1")
    with pytest.raises(ApiError) as caught:
        limiter.check("a", "10.0.0.2")  # this user, from anywhere
    assert (caught.value.status, caught.value.code) == (429, "too_many_attempts")
    with pytest.raises(ApiError):
        limiter.check("e", "10.0.0.1")  # 8 = 4 x 2 from this address, whoever
    limiter.check("e", "10.0.0.2")
