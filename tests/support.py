"""Test helpers a user can use too: start the real services, wait for conditions."""

from __future__ import annotations

import os
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


def _start_containers() -> tuple[ServiceEnv, Callable[[], None]]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
    pg = PostgresContainer("postgres:16").with_command("postgres -c wal_level=logical")
    kafka.start()
    pg.start()
    dsn = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")

    def stop() -> None:
        kafka.stop()
        pg.stop()

    return ServiceEnv(kafka.get_bootstrap_server(), dsn, {}), stop


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
