"""The ``dataflow`` command line, on click.

A command is one decorated function in this module (``@cli.command()``, or
``@<group>.command()`` under a group): click parses and checks the arguments (``--help``
on every level exits 0, bad usage exits 2 with a usage line), and the body hands them to
the implementation, imported inside the function so that ``dataflow --help`` or
``dataflow stack env`` does not load Faust. A body returns the exit code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=_CONTEXT)
def cli() -> None:
    """DataFlow: Kafka-native streaming ETL (CDC -> pipelines -> databases and object storage)."""


# -- local stack ---------------------------------------------------------------------------


@cli.group()
def stack() -> None:
    """Local services (Kafka, Postgres, S3, MongoDB wire) on 127.0.0.1 under DATAFLOW_HOME."""


def _stack_command(name: str, help_: str) -> None:
    def run() -> int:
        from ops._stack import stack_command

        return stack_command(name)

    stack.command(name, help=help_)(run)


for _name, _help in (
    ("up", "Start the services that are not running; print their addresses."),
    ("down", "Stop every service this stack started."),
    ("status", "Show each service: running, stopped or external."),
    ("env", 'Print `export VAR=...` lines: eval "$(dataflow stack env)".'),
):
    _stack_command(_name, _help)


# -- data path processes -------------------------------------------------------------------


@cli.group()
def source() -> None:
    """CDC sources."""


@source.command("run")
@click.argument("file", type=_FILE)
@click.option("--drain", is_flag=True,
              help="stop once the WAL up to its position at start is in Kafka (batch runs)")
def source_run(file: Path, drain: bool) -> int:
    """Run a CDC source from FILE (YAML or JSON source settings) until SIGTERM/SIGINT."""
    from ops._source_cli import run_source

    return run_source(file, drain=drain)


@cli.command()
@click.argument("file", type=_FILE)
@click.option("--store", type=click.Choice(["memory://", "rocksdb://"]), default=None,
              help="table store (default: DATAFLOW_STORE or memory://)")
@click.option("--web-port", type=int, default=None,
              help="serve Faust's web views on 127.0.0.1:PORT (default: off)")
@click.option("--log-level", default=None, help="Faust's log level")
@click.option("--check", is_flag=True, help="validate the spec and exit")
@click.option("--drain", is_flag=True,
              help="process the input up to its end offsets at start, commit, exit 0 (batch runs)")
def worker(file: Path, store: str | None, web_port: int | None, log_level: str | None,
           check: bool, drain: bool) -> int:
    """Run the pipeline spec FILE as a Faust worker (a bad spec: every error, exit 2)."""
    from ops._worker_cli import run_worker

    return run_worker(file, store=store, web_port=web_port, log_level=log_level, check=check,
                      drain=drain)


@cli.command()
@click.argument("file", type=_FILE)
@click.option("--sink", type=click.Choice(["postgres", "mongodb", "objectstore"]), default=None,
              help="which of the spec's sinks (needed when it has several)")
@click.option("--idle-exit", type=float, default=None,
              help="stop after this many seconds without new records")
@click.option("--metrics-port", type=int, default=None,
              help="serve Prometheus /metrics on 127.0.0.1:PORT (loader.metrics_port)")
@click.option("--drain", is_flag=True,
              help="load every partition up to its end offset at start, then stop (batch runs)")
def load(file: Path, sink: str | None, idle_exit: float | None, metrics_port: int | None,
         drain: bool) -> int:
    """Run one loader from a pipeline spec or a loader config FILE until SIGTERM/SIGINT."""
    from ops._load_cli import run_load

    return run_load(file, sink=sink, idle_exit=idle_exit, metrics_port=metrics_port,
                    drain=drain)


# -- dead letters --------------------------------------------------------------------------


@cli.group()
def dlq() -> None:
    """Dead letters: look at them and replay them."""


def _dlq_options(fn: click.decorators.FC) -> click.decorators.FC:
    for option in reversed((
        click.argument("target", metavar="PIPELINE_OR_SPEC"),
        click.option("--stage", default=None, help="only this stage: 'rule:amount_positive', "
                     "a glob such as 'rule:*', or a rule name"),
        click.option("--bootstrap", default=None, help="Kafka bootstrap servers (default: "
                     "KAFKA_BOOTSTRAP_SERVERS or the local stack)"),
        click.option("--api", "api_url", default=None, help="through this `dataflow api` "
                     "(default: DATAFLOW_API_URL when set and no --bootstrap); "
                     "PIPELINE_OR_SPEC is then a pipeline's name or id, or a spec file "
                     "naming it"),
        click.option("--json", "as_json", is_flag=True, help="print JSON (the API's)"),
        click.option("--timeout", type=float, default=60.0, show_default=True),
    )):
        fn = option(fn)
    return fn


@dlq.command("replay")
@_dlq_options
@click.option("--to-topic", default=None, help="produce every record here (default: back to "
              "its source topic, when that is one of the spec's source topics)")
@click.option("--all", "from_start", is_flag=True,
              help="start from the beginning of the DLQ, not from the last replay")
@click.option("--dry-run", is_flag=True, help="count, produce nothing")
def dlq_replay(target: str, stage: str | None, bootstrap: str | None, api_url: str | None,
               as_json: bool, timeout: float, to_topic: str | None, from_start: bool,
               dry_run: bool) -> int:
    """Re-produce dead letters of PIPELINE_OR_SPEC (a name or a spec file) to its source topics."""
    from ops._dlq_cli import replay

    return replay(target, stage=stage, bootstrap=bootstrap, timeout=timeout, to_topic=to_topic,
                  from_start=from_start, dry_run=dry_run, api=api_url, as_json=as_json)


@dlq.command("show")
@_dlq_options
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def dlq_show(target: str, stage: str | None, bootstrap: str | None, api_url: str | None,
             as_json: bool, timeout: float, limit: int) -> int:
    """List dead letters of PIPELINE_OR_SPEC: stage, source position, error."""
    from ops._dlq_cli import show

    return show(target, stage=stage, bootstrap=bootstrap, timeout=timeout, limit=limit,
                api=api_url, as_json=as_json)


# -- control plane ------------------------------------------------------------------------


@cli.command()
@click.option("--host", default=None, help="address to bind (default 127.0.0.1)")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="port (default 8600; 0: any free port)")
def api(host: str | None, port: int | None) -> int:
    """Serve the REST API (registry in Kafka: KAFKA_BOOTSTRAP_SERVERS, DATAFLOW_REGISTRY_PREFIX)."""
    from ops.api import run_api

    return run_api(host=host, port=port)


# -- pipelines through the REST API ---------------------------------------------------------

_JSON = click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
_TARGET = click.argument("target", metavar="NAME_OR_ID")


_API_URL = click.option("--api-url", envvar="DATAFLOW_API_URL", default="http://127.0.0.1:8600",
                        show_default=True, help="the `dataflow api` to talk to (DATAFLOW_API_URL)")


def _api_group(name: str, help_: str) -> click.Group:
    """``dataflow NAME --api-url URL ...``: the commands below get the URL as their object."""
    @_API_URL
    @click.pass_context
    def group(ctx: click.Context, api_url: str) -> None:
        ctx.obj = api_url

    made: click.Group = cli.group(name, help=help_)(group)
    return made


pipelines = _api_group(
    "pipelines", "Pipelines as resources of the REST API (`dataflow api`): apply, run, pause, watch.")


def _api(url: str) -> Any:
    from ops._pipelines_cli import ApiClient

    return ApiClient(url)


@pipelines.command("apply")
@click.option("-f", "--file", "file", type=_FILE, required=True,
              help="the pipeline spec (YAML or JSON)")
@_JSON
@click.pass_obj
def pipelines_apply(url: str, file: Path, as_json: bool) -> int:
    """Create the pipeline of FILE, or update it (a new version) when its name exists."""
    from ops._pipelines_cli import apply

    return apply(_api(url), file, as_json)


@pipelines.command("list")
@click.option("--state", type=click.Choice(["stopped", "starting", "running", "paused",
                                            "failed"]), default=None)
@click.option("--prefix", default=None, help="only names starting with this")
@_JSON
@click.pass_obj
def pipelines_list(url: str, state: str | None, prefix: str | None, as_json: bool) -> int:
    """List pipelines: name, id, version, state."""
    from ops._pipelines_cli import list_

    return list_(_api(url), state, prefix, as_json)


@pipelines.command("delete")
@_TARGET
@click.option("--purge", is_flag=True,
              help="also remove its consumer groups, replication slot and internal topics")
@_JSON
@click.pass_obj
def pipelines_delete(url: str, target: str, purge: bool, as_json: bool) -> int:
    """Delete a pipeline (its processes are stopped first)."""
    from ops._pipelines_cli import delete

    return delete(_api(url), target, purge, as_json)


_WAIT = click.option("--wait", is_flag=True,
                     help="until the state says it happened (a batch run: until it ended)")
_TIMEOUT = click.option("--timeout", type=float, default=120.0, show_default=True,
                        help="seconds --wait waits")


@pipelines.command("run")
@_TARGET
@click.option("--once", is_flag=True, help="one batch run: drain what is there and stop")
@_WAIT
@_TIMEOUT
@_JSON
@click.pass_obj
def pipelines_run(url: str, target: str, once: bool, wait: bool, timeout: float,
                  as_json: bool) -> int:
    """Start the pipeline (a scheduled one, or --once: one batch run now)."""
    from ops._pipelines_cli import action

    return action(_api(url), "run", target, as_json, once=once, wait=wait, timeout=timeout)


def _action(verb: str, help_: str) -> None:
    @_TARGET
    @_WAIT
    @_TIMEOUT
    @_JSON
    @click.pass_obj
    def run(url: str, target: str, wait: bool, timeout: float, as_json: bool) -> int:
        from ops._pipelines_cli import action

        return action(_api(url), verb, target, as_json, wait=wait, timeout=timeout)

    pipelines.command(verb, help=help_)(run)


for _verb, _help in (
    ("pause", "Stop the pipeline's processes, keeping their positions."),
    ("resume", "Start a paused pipeline again where it paused."),
    ("stop", "Stop the pipeline's processes."),
):
    _action(_verb, _help)


def _api_command(group: click.Group, verb: str, target: str, help_: str,
                 argument: Callable[[Any], Any] | None = None) -> None:
    """``dataflow GROUP VERB [ARGUMENT] [--json]``: ``target`` (``module:function``) called
    with the API client, the argument and ``as_json``; the module is imported when it runs."""
    def run(url: str, as_json: bool, **args: str) -> int:
        module, name = target.split(":")
        call: Callable[..., int] = getattr(importlib.import_module(module), name)
        return call(_api(url), *args.values(), as_json)

    command = click.pass_obj(_JSON(run))
    group.command(verb, help=help_)(argument(command) if argument else command)


for _verb, _help in (
    ("get", "Show one pipeline and its spec (secrets masked)."),
    ("status", "State, processes and figures of a pipeline."),
):
    _api_command(pipelines, _verb, f"ops._pipelines_cli:{_verb}", _help, _TARGET)


@pipelines.command("runs")
@_TARGET
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@_JSON
@click.pass_obj
def pipelines_runs(url: str, target: str, limit: int, as_json: bool) -> int:
    """Run history, newest first: start, end, rows in/out/failed, outcome."""
    from ops._pipelines_cli import runs

    return runs(_api(url), target, limit, as_json)


# -- identities through the REST API --------------------------------------------------------

_ROLE = click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
_PASSWORD_STDIN = click.option("--password-stdin", is_flag=True,
                               help="read the password from standard input (else: asked for)")


def _password(from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=confirm))


users = _api_group(
    "users", "Users of the REST API (an admin's credentials: DATAFLOW_API_KEY or DATAFLOW_API_TOKEN).")


@users.command("create")
@click.argument("name")
@_ROLE
@_PASSWORD_STDIN
@_JSON
@click.pass_obj
def users_create(url: str, name: str, role: str, password_stdin: bool, as_json: bool) -> int:
    """Create user NAME with ROLE."""
    from ops._auth_cli import create_user

    return create_user(_api(url), name, role, _password(password_stdin, True), as_json)


_api_command(users, "list", "ops._auth_cli:list_users", "List users: name, role, disabled.")
_api_command(users, "delete", "ops._auth_cli:delete_user",
             "Delete user NAME (its tokens stop working at once).", click.argument("name"))


keys = _api_group(
    "keys", "API keys of the REST API (an admin's credentials: DATAFLOW_API_KEY or DATAFLOW_API_TOKEN).")


@keys.command("create")
@click.option("--name", required=True, help="what the key is for")
@_ROLE
@_JSON
@click.pass_obj
def keys_create(url: str, name: str, role: str, as_json: bool) -> int:
    """Create an API key; it is printed once and kept nowhere."""
    from ops._auth_cli import create_key

    return create_key(_api(url), name, role, as_json)


_api_command(keys, "list", "ops._auth_cli:list_keys",
             "List API keys (never the keys themselves).")
_ID = click.argument("key_id", metavar="ID")
_api_command(keys, "revoke", "ops._auth_cli:revoke_key",
             "Revoke the API key ID (refused from the next request on).", _ID)
_api_command(keys, "delete", "ops._auth_cli:delete_key", "Delete the API key ID.", _ID)


auth = _api_group("auth", "Tokens of the REST API.")


@auth.command("token")
@click.argument("username")
@_PASSWORD_STDIN
@click.pass_obj
def auth_token(url: str, username: str, password_stdin: bool) -> int:
    """Print a bearer token for USERNAME: export DATAFLOW_API_TOKEN=$(dataflow auth token ...)."""
    from ops._auth_cli import token

    return token(_api(url), username, _password(password_stdin, False))


# -- demo ----------------------------------------------------------------------------------


@cli.command()
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="how long the target may take to match the source")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write the results as JSON here")
def demo(timeout: float, report: Path | None) -> int:
    """End-to-end run on the local stack: CDC -> pipeline -> Postgres + Parquet."""
    from ops._demo import run_demo

    return run_demo(timeout=timeout, report=report)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dataflow`` console script: the exit code of the command."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args, prog_name="dataflow", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    return rv if isinstance(rv, int) else 0
