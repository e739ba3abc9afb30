"""``DATAFLOW_KAFKA_*``: one frozen ``KafkaSecurity``, turned into librdkafka properties and
Faust (aiokafka) credentials, against a broker that requires SASL over plaintext and TLS."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from agents._runtime import faust_credentials
from connectors import KafkaSecurity, check_access, kafka_config
from schemas import ConfigError
from tests.secure_kafka import PASSWORD, USER, SecureKafka

SASL = {"DATAFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DATAFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "DATAFLOW_KAFKA_SASL_USERNAME": USER, "DATAFLOW_KAFKA_SASL_PASSWORD": PASSWORD}


@pytest.mark.unit
def test_settings_from_env_and_their_librdkafka_properties(tmp_path: Path) -> None:
    assert KafkaSecurity.from_env({}).librdkafka() == {"security.protocol": "plaintext"}
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    security = KafkaSecurity.from_env({**SASL, "DATAFLOW_KAFKA_SSL_CA_LOCATION": str(ca)})
    assert security.librdkafka() == {
        "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": USER, "sasl.password": PASSWORD, "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https"}
    assert PASSWORD not in repr(security) and PASSWORD not in str(security.model_dump())
    assert kafka_config("h:1", {"linger.ms": 5}, security=security)["bootstrap.servers"] == "h:1"


@pytest.mark.unit
@pytest.mark.parametrize(("env", "says"), [
    ({**SASL, "DATAFLOW_KAFKA_SASL_PASSWORD": ""},
     "DATAFLOW_KAFKA_SASL_PASSWORD: required with security protocol SASL_SSL"),
    ({"DATAFLOW_KAFKA_SASL_PASSWORD": PASSWORD},
     "DATAFLOW_KAFKA_SASL_PASSWORD: SASL settings need security protocol SASL_PLAINTEXT"),
    ({**SASL, "DATAFLOW_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "DATAFLOW_KAFKA_SASL_MECHANISM: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
    ({**SASL, "DATAFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
      "DATAFLOW_KAFKA_SSL_CA_LOCATION": "/etc/hostname"},
     "DATAFLOW_KAFKA_SSL_CA_LOCATION: a TLS setting needs security protocol SSL or SASL_SSL"),
    ({**SASL, "DATAFLOW_KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
     "DATAFLOW_KAFKA_SSL_CA_LOCATION: cannot read /nonexistent/ca.pem"),
])
def test_bad_settings_are_a_config_error_without_the_password(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaSecurity.from_env(env)
    assert says in str(caught.value)
    assert PASSWORD not in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize(("mechanism", "tls"), [("PLAIN", False), ("SCRAM-SHA-256", False),
                                                ("SCRAM-SHA-512", True), ("PLAIN", True),
                                                (None, True)])
def test_librdkafka_and_faust_clients_reach_the_secured_listeners(
        secure_kafka: SecureKafka, mechanism: str | None, tls: bool) -> None:
    env = secure_kafka.env(mechanism, tls=tls)
    bootstrap, security = env["KAFKA_BOOTSTRAP_SERVERS"], KafkaSecurity.from_env(env)
    assert check_access(bootstrap, security)
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka_config(bootstrap, security=security))
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer(kafka_config(bootstrap, {"acks": "all"}, security=security))
    producer.produce(topic, b"hello", b"k")
    assert producer.flush(30) == 0

    async def consume() -> bytes | None:
        auth = credentials_to_aiokafka_auth(faust_credentials(security))
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", **auth)
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), 30)
            return msg.value
        finally:
            await consumer.stop()

    assert asyncio.run(consume()) == b"hello"
    admin.delete_topics([topic])


@pytest.mark.integration
def test_a_wrong_password_or_an_unknown_ca_fails_at_once_and_says_why(
        secure_kafka: SecureKafka) -> None:
    env = secure_kafka.env("SCRAM-SHA-512", password="not-the-password-4d1e")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        check_access(env["KAFKA_BOOTSTRAP_SERVERS"], KafkaSecurity.from_env(env))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"SASL authentication failed as '{USER}' (SCRAM-SHA-512)" in message
    assert "not-the-password-4d1e" not in message and "invalid credentials" in message
    # the system CAs do not know the test CA: the broker's certificate does not verify
    env = {**secure_kafka.env(), "DATAFLOW_KAFKA_SSL_CA_LOCATION": "/etc/ssl/certs/ca-certificates.crt"}
    with pytest.raises(ConfigError, match="TLS failed: .*certificate verify failed"):
        check_access(env["KAFKA_BOOTSTRAP_SERVERS"], KafkaSecurity.from_env(env))
