"""``dataflow users ...``, ``dataflow keys ...`` and ``dataflow auth token``: the API's
identities from the command line, through the same client as ``dataflow pipelines``
(``DATAFLOW_API_URL``, credentials from ``DATAFLOW_API_KEY`` or ``DATAFLOW_API_TOKEN``).

A password is read from standard input (``--password-stdin``) or asked for without echo;
it is never an argument. A new API key is printed once and kept nowhere.
"""

from __future__ import annotations

import json
from typing import Any

from ops._pipelines_cli import ApiClient, _run, table


def _post(api: ApiClient, path: str, doc: dict[str, Any]) -> Any:
    return api.call("POST", path, body=json.dumps(doc).encode()).body


def create_user(api: ApiClient, name: str, role: str, password: str, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        user = _post(api, "/api/v1/users", {"name": name, "role": role, "password": password})
        return user, f"created user {user['name']} (role {user['role']})"
    return _run("create", as_json, go, group="users")


def list_users(api: ApiClient, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        items = api.get("/api/v1/users")["items"]
        rows = [(u["name"], u["role"], "yes" if u["disabled"] else "no", u["created_at"])
                for u in items]
        return items, table(rows, ("NAME", "ROLE", "DISABLED", "CREATED"))
    return _run("list", as_json, go, group="users")


def delete_user(api: ApiClient, name: str, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        body = api.call("DELETE", f"/api/v1/users/{name}").body
        return body, f"deleted user {name}"
    return _run("delete", as_json, go, group="users")


def create_key(api: ApiClient, name: str, role: str, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        key = _post(api, "/api/v1/keys", {"name": name, "role": role})
        return key, (f"created API key {key['name']} (id {key['id']}, role {key['role']}); "
                     f"it is shown only now:\n{key['key']}")
    return _run("create", as_json, go, group="keys")


def list_keys(api: ApiClient, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        items = api.get("/api/v1/keys")["items"]
        rows = [(k["id"], k["name"], k["role"], "yes" if k["revoked"] else "no",
                 k["created_at"]) for k in items]
        return items, table(rows, ("ID", "NAME", "ROLE", "REVOKED", "CREATED"))
    return _run("list", as_json, go, group="keys")


def revoke_key(api: ApiClient, key_id: str, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        body = api.call("POST", f"/api/v1/keys/{key_id}/revoke").body
        return body, f"revoked API key {body['name']} (id {key_id})"
    return _run("revoke", as_json, go, group="keys")


def delete_key(api: ApiClient, key_id: str, as_json: bool) -> int:
    def go() -> tuple[Any, str]:
        body = api.call("DELETE", f"/api/v1/keys/{key_id}").body
        return body, f"deleted API key {key_id}"
    return _run("delete", as_json, go, group="keys")


def token(api: ApiClient, username: str, password: str) -> int:
    """Print a bearer token alone on a line: ``export DATAFLOW_API_TOKEN=$(...)``."""
    def go() -> tuple[Any, str]:
        body = _post(api, "/api/v1/auth/token", {"username": username, "password": password})
        return body, body["access_token"]
    return _run("token", False, go, group="auth")
