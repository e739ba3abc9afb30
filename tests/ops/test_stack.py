"""``dataflow stack``: up twice is harmless, down leaves nothing, stale state is handled.

Integration tests run a private stack in its own ``DATAFLOW_HOME`` (never the shared one),
sharing only the download cache through ``DATAFLOW_CACHE``. Processes are found through
/proc: anything whose command line or working directory lies in the private home, and
their descendants. Zombies (``<defunct>``, reaped late by this sandbox's pid 1) are ignored.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from confluent_kafka.admin import AdminClient

from ops._stack import (
    SERVICES,
    Stack,
    StackState,
    cache_dir,
    default_home,
    free_port,
    grant_traverse,
    locked,
    pid_alive,
    port_free,
)
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARS = [cls.env_var for cls in SERVICES]


# ---------------------------------------------------------------- helpers


def _proc_table() -> dict[int, tuple[int, str, str, str]]:
    """pid -> (ppid, state, starttime, cmdline + cwd) for every process we can read."""
    table: dict[int, tuple[int, str, str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19], f"{cmdline} [cwd {cwd}]")
    return table


def stack_processes(home: Path) -> dict[tuple[int, str], str]:
    """Live (non-zombie) processes of the stack in ``home``: (pid, starttime) -> description."""
    table = _proc_table()
    marker = str(home)
    own = {pid for pid, (_, _, _, desc) in table.items() if marker in desc}
    grew = True
    while grew:  # add descendants (postgres backends carry no path in their command line)
        kids = {pid for pid, (ppid, _, _, _) in table.items() if ppid in own} - own
        own |= kids
        grew = bool(kids)
    return {(pid, table[pid][2]): table[pid][3] for pid in own if table[pid][1] != "Z"}


def still_running(procs: dict[tuple[int, str], str]) -> dict[tuple[int, str], str]:
    """Those of ``procs`` that still run (same pid and start time, not a zombie)."""
    table = _proc_table()
    return {key: desc for key, desc in procs.items()
            if key[0] in table and table[key[0]][2] == key[1] and table[key[0]][1] != "Z"}


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update(DATAFLOW_HOME=str(home), DATAFLOW_CACHE=str(cache_dir(default_home())))
    env.update(extra)
    return env


def dataflow(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def parse_env(out: str) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: v for k, v in pairs}


@pytest.fixture
def private_home() -> Iterator[Path]:
    """A throwaway DATAFLOW_HOME inside a private (0700) temporary folder, as a CI clone may be."""
    home = Path(tempfile.mkdtemp(prefix="dataflow-test-")) / "home"
    try:
        yield home
    finally:
        try:
            dataflow(_clean_env(home), "stack", "down", timeout=180)
        finally:
            for (pid, _), _desc in still_running(stack_processes(home)).items():
                try:  # our own private stack's processes, by pid
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(home.parent, ignore_errors=True)


def _held_port() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _kafka_answers(bootstrap: str) -> bool:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return bool(md.brokers)


def _pg_answers(dsn: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return conn.execute("SHOW wal_level").fetchone() == ("logical",)


# ---------------------------------------------------------------- integration


@pytest.mark.integration
def test_up_twice_is_harmless_and_down_leaves_no_process(private_home: Path) -> None:
    env = _clean_env(private_home)
    first = dataflow(env, "stack", "up")
    assert first.returncode == 0, first.stderr
    started = parse_env(first.stdout)
    assert set(SERVICE_VARS) <= set(started)
    procs = stack_processes(private_home)
    assert any("kafka.Kafka" in d for d in procs.values()), procs
    assert any("postgres" in d for d in procs.values()), procs

    second = dataflow(env, "stack", "up")
    assert second.returncode == 0, second.stderr
    assert parse_env(second.stdout) == started  # same ports
    assert stack_processes(private_home) == procs  # nothing new started, nothing restarted

    status = dataflow(env, "stack", "status")
    assert status.returncode == 0
    assert all(line.endswith(": running") for line in status.stdout.splitlines()), status.stdout
    assert parse_env(dataflow(env, "stack", "env").stdout) == started
    assert _kafka_answers(started["KAFKA_BOOTSTRAP_SERVERS"])
    assert _pg_answers(started["DATAFLOW_PG_DSN"])

    down = dataflow(env, "stack", "down")
    assert down.returncode == 0, down.stderr
    assert still_running(procs) == {}
    assert stack_processes(private_home) == {}
    status = dataflow(env, "stack", "status")
    assert all(line.endswith(": stopped") for line in status.stdout.splitlines()), status.stdout


@pytest.mark.integration
def test_taken_ports_and_stale_pids_are_handled(private_home: Path) -> None:
    """Preferred ports held by others, a stale pid of an unrelated process, then a crash."""
    kafka_sock, ctl_sock, pg_sock = _held_port(), _held_port(), _held_port()
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        taken = {s.getsockname()[1] for s in (kafka_sock, ctl_sock, pg_sock)}
        state = StackState(private_home / "stack" / "state.json", {
            "kafka": {"pid": bystander.pid, "port": kafka_sock.getsockname()[1],
                      "controller_port": ctl_sock.getsockname()[1]},
            "postgres": {"port": pg_sock.getsockname()[1]},
        })
        state.save()
        env = _clean_env(private_home)

        up = dataflow(env, "stack", "up")
        assert up.returncode == 0, up.stderr
        got = parse_env(up.stdout)
        kafka_port = int(got["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
        pg_port = int(psycopg.conninfo.conninfo_to_dict(got["DATAFLOW_PG_DSN"])["port"] or 0)
        assert kafka_port not in taken and pg_port not in taken
        assert parse_env(dataflow(env, "stack", "env").stdout) == got  # env prints the new ports
        assert _kafka_answers(got["KAFKA_BOOTSTRAP_SERVERS"])
        assert _pg_answers(got["DATAFLOW_PG_DSN"])
        assert bystander.poll() is None, "stack killed an unrelated process that reused a pid"

        # a crash: our Kafka and postmaster die by SIGKILL, leaving pid files behind
        saved = StackState.load(private_home / "stack" / "state.json").data
        postmaster = private_home / "stack" / "postgres" / "data" / "postmaster.pid"
        crashed = [saved["kafka"]["pid"], int(postmaster.read_text().split()[0])]
        for pid in crashed:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(pid_alive(p) and _not_zombie(p) for p in crashed),
                 timeout=30, what="the killed services to exit")
        assert postmaster.exists()
        status = dataflow(env, "stack", "status")
        assert "kafka: stopped" in status.stdout and "postgres: stopped" in status.stdout

        again = dataflow(env, "stack", "up")
        assert again.returncode == 0, again.stderr
        assert parse_env(again.stdout) == got  # its ports were free again: kept
        assert _kafka_answers(got["KAFKA_BOOTSTRAP_SERVERS"])
        assert _pg_answers(got["DATAFLOW_PG_DSN"])
        procs = stack_processes(private_home)
        assert dataflow(env, "stack", "down").returncode == 0
        assert still_running(procs) == {}
        assert bystander.poll() is None
    finally:
        for s in (kafka_sock, ctl_sock, pg_sock):
            s.close()
        bystander.kill()
        bystander.wait()


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
def test_down_after_eval_of_env_stops_the_stacks_own_service(private_home: Path) -> None:
    """``eval "$(dataflow stack env)"`` exports the stack's own addresses; ``down`` and
    ``status`` still take them for its own services. Only S3 (moto, a few seconds) is
    started here; the other variables name external services."""
    others = {var: f"external://{var.lower()}" for var in SERVICE_VARS
              if var != "DATAFLOW_S3_ENDPOINT"}
    env = _clean_env(private_home, **others)
    up = dataflow(env, "stack", "up", timeout=120)
    assert up.returncode == 0, up.stderr
    endpoint = parse_env(up.stdout)["DATAFLOW_S3_ENDPOINT"]
    assert endpoint.startswith("http://127.0.0.1:")
    procs = stack_processes(private_home)
    assert any("moto.server" in desc for desc in procs.values()), procs

    exported = {**env, **parse_env(dataflow(env, "stack", "env").stdout)}  # as after eval
    assert exported["DATAFLOW_S3_ENDPOINT"] == endpoint
    status = dataflow(exported, "stack", "status").stdout.splitlines()
    assert "s3: running" in status
    assert sum(": external (" in line for line in status) == len(SERVICE_VARS) - 1
    down = dataflow(exported, "stack", "down", timeout=120)
    assert (down.returncode, down.stdout) == (0, "stack down: stopped s3\n"), down.stderr
    assert still_running(procs) == {}
    assert "s3: stopped" in dataflow(exported, "stack", "status").stdout.splitlines()

    again = dataflow(exported, "stack", "up", timeout=120)  # ours again: started, same port
    assert again.returncode == 0, again.stderr
    assert parse_env(again.stdout)["DATAFLOW_S3_ENDPOINT"] == endpoint
    assert dataflow(exported, "stack", "down", timeout=120).stdout == "stack down: stopped s3\n"
    assert stack_processes(private_home) == {}


def _listening(pid: int) -> set[str]:
    """The local addresses ``pid`` listens on (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


def _registry_subjects(url: str) -> list[str]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/subjects", timeout=10) as resp:
        return list(json.loads(resp.read()))


@pytest.mark.integration
def test_registry_binds_loopback_is_backward_and_keeps_schemas_in_postgres(
        private_home: Path, fresh_db: str) -> None:
    """``stack up`` starts Apicurio Registry (the other services external here): both its
    ports on 127.0.0.1, compatibility BACKWARD, and a schema registered before ``down`` is
    still there after ``up`` (stored in ``<db>_registry`` of the stack's Postgres)."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    others = {var: f"external://{var.lower()}" for var in SERVICE_VARS
              if var not in ("DATAFLOW_SCHEMA_REGISTRY_URL", "DATAFLOW_PG_DSN")}
    env = _clean_env(private_home, DATAFLOW_PG_DSN=fresh_db, **others)
    try:
        up = dataflow(env, "stack", "up", timeout=300)
        assert up.returncode == 0, up.stderr
        url = parse_env(up.stdout)["DATAFLOW_SCHEMA_REGISTRY_URL"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/apis/ccompat/v7")
        state = StackState.load(private_home / "stack" / "state.json").get("registry")
        bound = {a.removeprefix("[::ffff:").replace("]:", ":") for a in _listening(state["pid"])}
        assert bound == {f"127.0.0.1:{state['port']}", f"127.0.0.1:{state['management_port']}"}
        client = SchemaRegistryClient({"url": url})
        assert client.get_compatibility() == "BACKWARD"
        record = '{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}'
        schema_id = client.register_schema("t-value", Schema(record, "AVRO"))
        assert dataflow(env, "stack", "down", timeout=120).stdout == "stack down: stopped registry\n"
        assert dataflow(env, "stack", "up", timeout=300).returncode == 0
        assert _registry_subjects(url) == ["t-value"]
        fresh = SchemaRegistryClient({"url": url})
        assert fresh.get_schema(schema_id).schema_str.replace(" ", "") == record
    finally:
        dataflow(env, "stack", "down", timeout=120)
        import psycopg.conninfo

        db = psycopg.conninfo.conninfo_to_dict(fresh_db)["dbname"]
        with psycopg.connect(psycopg.conninfo.make_conninfo(fresh_db, dbname="postgres"),
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}_registry" WITH (FORCE)')


# ---------------------------------------------------------------- unit: no services needed


@pytest.mark.unit
def test_external_services_start_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    given = {var: f"external://{var.lower()}" for var in SERVICE_VARS}
    env = _clean_env(home, **given)
    up = dataflow(env, "stack", "up", timeout=60)
    assert up.returncode == 0, up.stderr
    assert parse_env(up.stdout) == given
    assert stack_processes(home) == {}
    assert not any((home / "stack" / cls.name).exists() for cls in SERVICES)
    status = dataflow(env, "stack", "status", timeout=60).stdout.splitlines()
    assert len(status) == len(SERVICES) and all(": external (" in line for line in status)
    assert dataflow(env, "stack", "down", timeout=60).returncode == 0


@pytest.mark.unit
@pytest.mark.parametrize("tool", ["java", "mvn"])
def test_missing_tool_is_a_one_line_error_naming_the_package(tmp_path: Path, tool: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if tool == "mvn":  # java is there, Maven is not, and the jar cache is empty
        java = shutil.which("java")
        assert java, "this test needs java on PATH to hide only Maven"
        (bindir / "java").symlink_to(java)
    others = {var: "external://x" for var in SERVICE_VARS if var != "KAFKA_BOOTSTRAP_SERVERS"}
    env = _clean_env(tmp_path / "home", PATH=str(bindir), DATAFLOW_CACHE=str(tmp_path / "cache"),
                     **others)
    up = dataflow(env, "stack", "up", timeout=60)
    assert up.returncode == 1
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1, up.stderr
    wanted = {"java": "openjdk", "mvn": "apt-get install maven"}[tool]
    assert wanted in lines[0]


@pytest.mark.unit
def test_free_port_prefers_the_given_port_unless_taken() -> None:
    held = _held_port()
    try:
        port = held.getsockname()[1]
        assert not port_free(port)
        other = free_port(port)
        assert other != port and port_free(other)
    finally:
        held.close()
    assert port_free(port)
    assert free_port(port) == port
    assert free_port(0) > 0


@pytest.mark.unit
def test_state_file_round_trip_and_damage(tmp_path: Path) -> None:
    path = tmp_path / "stack" / "state.json"
    assert StackState.load(path).data == {}
    state = StackState(path, {"kafka": {"pid": 12, "port": 19092}})
    state.get("postgres")["port"] = 15432
    state.save()
    assert StackState.load(path).data == {"kafka": {"pid": 12, "port": 19092},
                                          "postgres": {"port": 15432}}
    path.write_text("{not json")
    assert StackState.load(path).data == {}


@pytest.mark.unit
def test_pid_alive_tells_our_process_from_a_reused_pid() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert pid_alive(proc.pid)
        wait_for(lambda: pid_alive(proc.pid, "sleep 60"), timeout=10, what="sleep to exec")
        assert not pid_alive(proc.pid, "/some/other/data/dir")
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid, "sleep 60")
    assert not pid_alive(None)


@pytest.mark.unit
def test_grant_traverse_adds_search_but_not_read(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    for folder in (tmp_path / "a", deep):
        os.chmod(folder, 0o700)
    grant_traverse(deep)
    for folder in (tmp_path / "a", deep):
        assert folder.stat().st_mode & 0o777 == 0o701


@pytest.mark.unit
def test_locked_excludes_a_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "stack" / ".lock"
    with locked(lock), open(lock, "a") as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


@pytest.mark.unit
def test_homes_and_external_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFLOW_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("DATAFLOW_CACHE", raising=False)
    assert default_home() == (tmp_path / "h").resolve()
    assert cache_dir(default_home()) == (tmp_path / "h").resolve() / "cache"
    monkeypatch.setenv("DATAFLOW_CACHE", str(tmp_path / "c"))
    assert cache_dir(default_home()) == (tmp_path / "c").resolve()
    for var in SERVICE_VARS:
        monkeypatch.setenv(var, f"given-{var}")
    stack = Stack(tmp_path / "h")
    assert stack.env() == {var: f"given-{var}" for var in SERVICE_VARS}
    assert set(stack.status().values()) == {f"external (given-{var})" for var in SERVICE_VARS}


@pytest.mark.unit
def test_docker_compose_offers_the_same_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "minio", "mongodb"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.1")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "9092:9092" in kafka["ports"]
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["postgres"]["image"].startswith("postgres:16")


@pytest.mark.unit
def test_an_exported_own_address_is_the_stacks_own_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision behind ``down`` after ``eval "$(dataflow stack env)"``: a variable equal
    to the address the stack recorded is its own service; any other value, an address it
    never recorded, or its port now held by someone else while ours is gone is external."""
    for var in SERVICE_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "h"
    held = _held_port()  # someone else's listener
    try:
        free, taken = free_port(0), held.getsockname()[1]
        StackState(home / "stack" / "state.json", {
            "kafka": {"pid": 0, "port": free}, "s3": {"pid": 0, "port": taken}}).save()
        stack = Stack(home)
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free}")
        monkeypatch.setenv("DATAFLOW_S3_ENDPOINT", f"http://127.0.0.1:{taken}")
        monkeypatch.setenv("DATAFLOW_PG_DSN", "postgresql://postgres@127.0.0.1:15432/dataflow")
        status = stack.status()
        assert status["kafka"] == "stopped"  # our address, nobody on it: ours, to start again
        assert stack.env()["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{free}"
        # our s3 is gone and another process answers on its port: that one is not ours
        assert status["s3"] == f"external (http://127.0.0.1:{taken})"
        # the default address of a service this home never recorded: not ours
        assert status["postgres"] == "external (postgresql://postgres@127.0.0.1:15432/dataflow)"
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.2:{free}")
        assert stack.status()["kafka"] == f"external (127.0.0.2:{free})"
    finally:
        held.close()
