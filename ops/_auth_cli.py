"""``dataflow users ...``, ``dataflow keys ...`` and ``dataflow auth token``: the API's
identities from the command line, through the same client as ``dataflow pipelines``
(``DATAFLOW_API_URL``, credentials from ``DATAFLOW_API_KEY`` or ``DATAFLOW_API_TOKEN``).

A password is read from standard input (``--password-stdin``) or asked for without echo;
it is never an argument. A new API key is printed once and kept nowhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ops._pipelines_cli import ApiClient, _run, table


def _post(api: ApiClient, path: str, doc: dict[str, Any]) -> Any:
    return api.call("POST", path, body=json.dumps(doc).encode()).body


def _answer(command: str, as_json: bool, call: Callable[[], Any],
            say: Callable[[Any], str]) -> int:
    """``dataflow GROUP VERB`` (``command``): the API's answer to ``call()``, or ``say(it)``."""
    group, verb = command.split()

    def go() -> tuple[Any, str]:
        body = call()
        return body, say(body)
    return _run(verb, as_json, go, group=group)


def create_user(api: ApiClient, name: str, role: str, password: str, as_json: bool) -> int:
    return _answer("users create", as_json,
                   lambda: _post(api, "/api/v1/users",
                                 {"name": name, "role": role, "password": password}),
                   lambda u: f"created user {u['name']} (role {u['role']})")


def list_users(api: ApiClient, as_json: bool) -> int:
    return _answer("users list", as_json, lambda: api.get("/api/v1/users")["items"],
                   lambda items: table([(u["name"], u["role"], "yes" if u["disabled"] else "no",
                                         u["created_at"]) for u in items],
                                       ("NAME", "ROLE", "DISABLED", "CREATED")))


def delete_user(api: ApiClient, name: str, as_json: bool) -> int:
    return _answer("users delete", as_json,
                   lambda: api.call("DELETE", f"/api/v1/users/{name}").body,
                   lambda _: f"deleted user {name}")


def create_key(api: ApiClient, name: str, role: str, as_json: bool) -> int:
    return _answer("keys create", as_json,
                   lambda: _post(api, "/api/v1/keys", {"name": name, "role": role}),
                   lambda k: (f"created API key {k['name']} (id {k['id']}, role {k['role']}); "
                              f"it is shown only now:\n{k['key']}"))


def list_keys(api: ApiClient, as_json: bool) -> int:
    return _answer("keys list", as_json, lambda: api.get("/api/v1/keys")["items"],
                   lambda items: table([(k["id"], k["name"], k["role"],
                                         "yes" if k["revoked"] else "no", k["created_at"])
                                        for k in items],
                                       ("ID", "NAME", "ROLE", "REVOKED", "CREATED")))


def revoke_key(api: ApiClient, key_id: str, as_json: bool) -> int:
    return _answer("keys revoke", as_json,
                   lambda: api.call("POST", f"/api/v1/keys/{key_id}/revoke").body,
                   lambda k: f"revoked API key {k['name']} (id {key_id})")


def delete_key(api: ApiClient, key_id: str, as_json: bool) -> int:
    return _answer("keys delete", as_json,
                   lambda: api.call("DELETE", f"/api/v1/keys/{key_id}").body,
                   lambda _: f"deleted API key {key_id}")


def token(api: ApiClient, username: str, password: str) -> int:
    """Print a bearer token alone on a line: ``export DATAFLOW_API_TOKEN=$(...)``."""
    return _answer("auth token", False,
                   lambda: _post(api, "/api/v1/auth/token",
                                 {"username": username, "password": password}),
                   lambda body: str(body["access_token"]))
