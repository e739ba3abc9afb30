"""The handlers of tokens, users, API keys and the audit log (their roles: the route table)."""

from __future__ import annotations

import asyncio
from typing import Any

from ops.api import _audit
from ops.api._auth import Identities
from ops.api._errors import ApiError
from ops.api._models import (
    ApiKey,
    ApiKeyCreated,
    ApiKeyList,
    AuditList,
    KeyCreate,
    Me,
    Removed,
    TokenRequest,
    TokenResponse,
    User,
    UserCreate,
    UserList,
    UserUpdate,
)
from ops.api._registry import Record
from ops.api._table import Call

_USER_FIELDS = set(User.model_fields)
_KEY_FIELDS = set(ApiKey.model_fields)


def _user(rec: Record) -> User:
    return User.model_validate({k: v for k, v in rec.items() if k in _USER_FIELDS})


def _key(rec: Record) -> ApiKey:
    return ApiKey.model_validate({k: v for k, v in rec.items() if k in _KEY_FIELDS})


async def _locked(call: Call, fn: Any) -> Any:
    """Run a blocking check-then-write on the identities, after catching up with Kafka,
    one at a time in this process."""
    ids = call.api.identities

    def go() -> Any:
        with ids.lock:
            ids.registry.catch_up()
            return fn(ids)
    return await asyncio.to_thread(go)


# ------------------------------------------------------------------ tokens


async def issue_token(call: Call) -> TokenResponse:
    body: TokenRequest = call.body
    call.tried = body.username
    address = call.request.remote or "-"
    limiter = call.api.logins
    limiter.check(body.username, address)
    try:
        who, token = await asyncio.to_thread(call.api.identities.login, body.username,
                                             body.password)
    except ApiError:
        limiter.failed(body.username, address)
        raise
    call.identity, call.target = who, who.name
    call.headers["Cache-Control"] = "no-store"
    return TokenResponse(access_token=token, token_type="bearer",
                         expires_in=call.api.identities.ttl_s)


async def me(call: Call) -> Me:
    assert call.identity is not None
    who = call.identity
    return Me(kind=who.kind, name=who.name, role=who.role)


# ------------------------------------------------------------------ users


async def list_users(call: Call) -> UserList:
    await asyncio.to_thread(call.api.registry.catch_up)
    users = sorted(call.api.identities.of_kind("user"), key=lambda r: r["name"])
    return UserList(items=[_user(r) for r in users])


def _found(ids: Identities, name: str) -> Record:
    rec = ids.user(name)
    if rec is None:
        raise ApiError(404, "not_found", f"no user named {name!r}", field="name")
    return rec


def _not_self(call: Call, name: str) -> None:
    """Refuse an admin's own lock-out (ask another admin)."""
    who = call.identity
    if who is not None and who.kind == "user" and who.name == name:
        raise ApiError(409, "self", "a user cannot delete, disable or demote themself",
                       field="name")


def _keeps_an_admin(ids: Identities, name: str, after: Record | None) -> None:
    """Refuse a change that leaves no enabled admin (nobody could manage the API)."""
    admins = [r for r in ids.of_kind("user") if r["role"] == "admin" and not r["disabled"]
              and r["name"] != name]
    if not admins and (after is None or after["role"] != "admin" or after["disabled"]):
        raise ApiError(409, "last_admin", f"user {name!r} is the last enabled admin",
                       field="name")


async def create_user(call: Call) -> User:
    body: UserCreate = call.body
    call.target = body.name

    def go(ids: Identities) -> Record:
        if ids.user(body.name) is not None:
            raise ApiError(409, "conflict", f"a user named {body.name!r} exists",
                           field="name")
        return ids.put_user(body.name, body.role, body.password)
    return _user(await _locked(call, go))


async def update_user(call: Call) -> User:
    body: UserUpdate = call.body
    name = call.params["name"]
    if body.disabled or body.role not in (None, "admin"):
        _not_self(call, name)

    def go(ids: Identities) -> Record:
        rec = dict(_found(ids, name))
        if body.role is not None:
            rec["role"] = body.role
        if body.disabled is not None:
            rec["disabled"] = body.disabled
        if body.password is not None:
            rec["password_hash"] = ids.hash(body.password)
        _keeps_an_admin(ids, name, rec)
        ids.set_user(rec)
        return rec
    return _user(await _locked(call, go))


async def delete_user(call: Call) -> Removed:
    name = call.params["name"]

    def go(ids: Identities) -> None:
        _found(ids, name)
        _not_self(call, name)
        _keeps_an_admin(ids, name, None)
        ids.delete_user(name)
    await _locked(call, go)
    return Removed(id=name, deleted=True)


# ------------------------------------------------------------------ API keys


async def list_keys(call: Call) -> ApiKeyList:
    await asyncio.to_thread(call.api.registry.catch_up)
    keys = sorted(call.api.identities.of_kind("key"), key=lambda r: (r["created_at"], r["id"]))
    return ApiKeyList(items=[_key(r) for r in keys])


async def create_key(call: Call) -> ApiKeyCreated:
    body: KeyCreate = call.body
    rec, key = await asyncio.to_thread(call.api.identities.create_key, body.name, body.role)
    call.target = rec["id"]
    call.headers["Cache-Control"] = "no-store"
    return ApiKeyCreated.model_validate({**_key(rec).model_dump(), "key": key})


def _key_found(ids: Identities, key_id: str) -> Record:
    rec = ids.key(key_id)
    if rec is None:
        raise ApiError(404, "not_found", f"no API key with id {key_id!r}", field="id")
    return rec


async def revoke_key(call: Call) -> ApiKey:
    key_id = call.params["id"]

    def go(ids: Identities) -> Record:
        rec = {**_key_found(ids, key_id), "revoked": True}
        ids.set_key(rec, key_id)
        return rec
    return _key(await _locked(call, go))


async def delete_key(call: Call) -> Removed:
    key_id = call.params["id"]

    def go(ids: Identities) -> None:
        _key_found(ids, key_id)
        ids.set_key(None, key_id)
    await _locked(call, go)
    return Removed(id=key_id, deleted=True)


# ------------------------------------------------------------------ audit


async def audit_log(call: Call) -> AuditList:
    return await _audit.page(call.api.registry, call.query)
