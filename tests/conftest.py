"""Session-scoped real services and per-test fresh names.

The stack comes up once per session (or the services named by ``KAFKA_BOOTSTRAP_SERVERS``
/ ``DATAFLOW_PG_DSN`` are used as they are; with a Docker engine and
``DATAFLOW_TESTCONTAINERS=1``, testcontainers starts them). A service that cannot be had
is a test error, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.secure_kafka import SecureKafka, start_secure_kafka
from tests.support import ServiceEnv, start_services


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceEnv]:
    env, stop = start_services()
    for key, value in env.as_environ().items():
        os.environ.setdefault(key, value)
    try:
        yield env
    finally:
        stop()


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A broker of the session's own that requires SASL (plaintext and TLS listeners; see
    ``tests/secure_kafka.py``), started only for the tests that ask for it."""
    broker = start_secure_kafka(tmp_path_factory.mktemp("secure-kafka"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(services: ServiceEnv) -> str:
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def pg_dsn(services: ServiceEnv) -> str:
    return services.pg_dsn


@pytest.fixture(scope="session")
def schema_registry_url(services: ServiceEnv) -> str:
    """The stack's Confluent-compatible registry (Apicurio), or the one
    ``DATAFLOW_SCHEMA_REGISTRY_URL`` names."""
    return services.extra["DATAFLOW_SCHEMA_REGISTRY_URL"]


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group, slot and database names."""
    return uuid.uuid4().hex[:10]


@contextmanager
def _topic_maker(bootstrap: str) -> Iterator[Callable[..., str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created: list[str] = []

    def _make(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield _make
    if created:
        for fut in admin.delete_topics(created).values():
            try:
                fut.result(timeout=30)
            except Exception:
                pass


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create a fresh topic: ``make_topic("orders", partitions=4, config={...})``."""
    with _topic_maker(kafka_bootstrap) as make:
        yield make


@pytest.fixture(scope="module")
def module_topics(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """``make_topic`` for a module-scoped fixture (its topics are deleted after the module)."""
    with _topic_maker(kafka_bootstrap) as make:
        yield make


@pytest.fixture
def fresh_db(pg_dsn: str) -> Iterator[str]:
    """A new, empty Postgres database for one test; its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    base = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(**{**base, "dbname": name})
    yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mysql_dsn(services: ServiceEnv) -> str:
    """The stack's MariaDB (``DATAFLOW_MYSQL_DSN``), as the ``cdc`` user."""
    return services.extra["DATAFLOW_MYSQL_DSN"]


@pytest.fixture
def mysql_db(mysql_dsn: str, unique: str) -> Iterator[str]:
    """A DSN to a new, empty MariaDB database, dropped afterwards."""
    import pymysql

    from connectors.mysql._config import parse_dsn

    args = {**parse_dsn(mysql_dsn), "database": None}
    name = f"t_{unique}"
    conn = pymysql.connect(**args, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield mysql_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture(scope="session")
def mongo_uri(services: ServiceEnv) -> str:
    """The MongoDB wire-protocol server (FerretDB from the stack, or DATAFLOW_MONGO_URI)."""
    return os.environ.get("DATAFLOW_MONGO_URI") or services.extra["DATAFLOW_MONGO_URI"]


@pytest.fixture(scope="session")
def s3_endpoint(services: ServiceEnv) -> str:
    """The S3-compatible endpoint (moto server from the stack, or DATAFLOW_S3_ENDPOINT)."""
    return os.environ.get("DATAFLOW_S3_ENDPOINT") or services.extra["DATAFLOW_S3_ENDPOINT"]
