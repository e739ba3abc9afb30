"""Test helpers a user can use too: start the real services, wait for conditions."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ops import Stack


@dataclass(frozen=True)
class ServiceEnv:
    kafka_bootstrap: str
    pg_dsn: str
    extra: dict[str, str]

    def as_environ(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "DATAFLOW_PG_DSN": self.pg_dsn,
            **self.extra,
        }


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def start_services() -> tuple[ServiceEnv, Callable[[], None]]:
    """The local stack (default), or testcontainers when asked for and Docker answers."""
    if os.environ.get("DATAFLOW_TESTCONTAINERS") == "1" and _docker_answers():
        return _start_containers()
    env = Stack().up()
    extra = {k: v for k, v in env.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATAFLOW_PG_DSN")}
    return (
        ServiceEnv(env["KAFKA_BOOTSTRAP_SERVERS"], env["DATAFLOW_PG_DSN"], extra),
        lambda: None,  # the stack stays up between runs; `dataflow stack down` stops it
    )


KAFKA_IMAGE = "apache/kafka:4.1.1"
POSTGRES_IMAGE = "postgres:16"


def kafka_container(host: str, port: int) -> Any:
    """Apache Kafka in KRaft mode, advertised on ``host:port`` (bound to the same port).

    testcontainers' own KafkaContainer drives Confluent images only (their start script
    and a version check that rejects 4.x tags), so Kafka runs as a generic container.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_LOG_CLEANER_BACKOFF_MS": "500",
    }
    return (
        DockerContainer(KAFKA_IMAGE, env=env)
        .with_bind_ports(9092, port)
        .waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    )


def postgres_container() -> Any:
    """Postgres 16 with logical decoding, as the CDC source needs."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.postgres import PostgresContainer

    return PostgresContainer(
        POSTGRES_IMAGE, username="postgres", password="postgres", dbname="dataflow", driver=None
    ).with_command(
        "postgres -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20"
    )


def _start_containers() -> tuple[ServiceEnv, Callable[[], None]]:
    """Kafka and Postgres in containers; whatever started is stopped if the other fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    pg = postgres_container()
    kafka = kafka_container(pg.get_docker_client().host(), port)
    started: list[Any] = []

    def stop() -> None:
        for container in reversed(started):
            container.stop()

    try:
        for container in (pg, kafka):
            container.start()
            started.append(container)
    except BaseException:
        stop()
        raise
    bootstrap = f"{kafka.get_docker_client().host()}:{port}"
    return ServiceEnv(bootstrap, pg.get_connection_url(), {}), stop


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns a truthy value; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
