"""``dataflow users``, ``keys`` and ``auth token`` against a real ``dataflow api``: the
credentials come from DATAFLOW_API_TOKEN / DATAFLOW_API_KEY, a key is printed once, a
revoked key is refused at once, a role that may not gets the API's 403."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.ops.api.conftest import ROOT, ApiProcess

pytestmark = pytest.mark.integration


def dataflow(api: ApiProcess, *args: str, stdin: str = "",
             **creds: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "DATAFLOW_API_URL": api.url, **creds})


def test_users_keys_and_tokens_from_the_command_line(api: ApiProcess) -> None:
    admin = {"DATAFLOW_API_TOKEN": api.token}
    out = dataflow(api, "users", "create", "ops1", "--role", "operator", "--password-stdin",
                   stdin="ops1-password\n", **admin)
    assert (out.returncode, out.stdout) == (0, "created user ops1 (role operator)\n"), out.stderr
    listed = json.loads(dataflow(api, "users", "list", "--json", **admin).stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("admin", "admin"), ("ops1", "operator")]

    token = dataflow(api, "auth", "token", "ops1", "--password-stdin", stdin="ops1-password\n")
    assert token.returncode == 0 and "ops1-password" not in token.stdout + token.stderr
    ops1 = {"DATAFLOW_API_TOKEN": token.stdout.strip()}
    assert dataflow(api, "pipelines", "list", **ops1).stdout == "no pipelines\n"
    refused = dataflow(api, "users", "list", **ops1)
    assert (refused.returncode, refused.stderr) == (1, "dataflow users list: 403 forbidden: "
                                                    "list_users needs the role admin (the "
                                                    "caller has operator)\n")

    made = dataflow(api, "keys", "create", "--role", "viewer", "--name", "dash", **admin)
    assert made.returncode == 0, made.stderr
    m = re.fullmatch(r"created API key dash \(id (\w+), role viewer\); it is shown only now:\n"
                     r"(dfk_\S+)\n", made.stdout)
    assert m, made.stdout
    key_id, key = m.groups()
    assert dataflow(api, "pipelines", "list", DATAFLOW_API_KEY=key).stdout == "no pipelines\n"
    shown = dataflow(api, "keys", "list", **admin).stdout
    assert key_id in shown and key not in shown
    assert dataflow(api, "keys", "revoke", key_id, **admin).stdout == (
        f"revoked API key dash (id {key_id})\n")
    gone = dataflow(api, "pipelines", "list", DATAFLOW_API_KEY=key)
    assert (gone.returncode, gone.stderr) == (1, "dataflow pipelines list: 401 unauthorized: "
                                              "the API key is revoked (set DATAFLOW_API_KEY "
                                              "or DATAFLOW_API_TOKEN)\n")
    assert dataflow(api, "keys", "delete", key_id, **admin).returncode == 0
    assert dataflow(api, "users", "delete", "ops1", **admin).stdout == "deleted user ops1\n"
    assert dataflow(api, "pipelines", "list", **ops1).returncode == 1
    none = dataflow(api, "pipelines", "list")
    assert none.returncode == 1 and "401 unauthorized: credentials required" in none.stderr
