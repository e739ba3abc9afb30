"""How every DataFlow process reaches Kafka: one frozen security settings object.

``KafkaSecurity.from_env()`` reads ``DATAFLOW_KAFKA_*`` (``SECURITY_PROTOCOL``,
``SASL_MECHANISM``, ``SASL_USERNAME``, ``SASL_PASSWORD``, ``SSL_CA_LOCATION``). Every confluent-kafka client (producer, consumer, admin) is built
from :func:`kafka_config`; the Faust worker's aiokafka clients get the same settings as
Faust credentials (``agents`` turns them into ``faust.SASLCredentials`` /
``SSLCredentials`` with :meth:`KafkaSecurity.ssl_context`). :func:`check_access` tells
wrong credentials or a certificate that does not verify at start, as a ``ConfigError``
naming what failed, instead of a client that retries forever.

Passwords are ``SecretStr``: never in a repr, an error or a log line.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, model_validator

from schemas import ConfigError, env_values, redact

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ENV_PREFIX = "DATAFLOW_KAFKA_"


def _vars(fields: list[str]) -> str:
    return ", ".join(f"{ENV_PREFIX}{name.upper()}" for name in fields)


class KafkaSecurity(BaseModel):
    """SASL and TLS settings of this process's Kafka clients (default: plaintext)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: the CA certificates (PEM) that sign the brokers' certificates (which must name the
    #: host connected to); default: the system's
    ssl_ca_location: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        """A setting the protocol does not use is refused, so is a missing one it needs."""
        sasl = ("sasl_mechanism", "sasl_username", "sasl_password")
        given = {name for name in self.model_fields_set if getattr(self, name) is not None}
        if self.sasl:
            missing = [name for name in sasl if getattr(self, name) is None]
            if missing:
                raise ValueError(f"{_vars(missing)}: required with security protocol "
                                 f"{self.security_protocol}")
        elif given & set(sasl):
            raise ValueError(f"{_vars(sorted(given & set(sasl)))}: SASL settings need security "
                             f"protocol SASL_PLAINTEXT or SASL_SSL")
        ca = self.ssl_ca_location
        if ca is not None and not self.tls:
            raise ValueError(f"{_vars(['ssl_ca_location'])}: a TLS setting needs security "
                             f"protocol SSL or SASL_SSL")
        if ca is not None and not os.access(ca, os.R_OK):
            raise ValueError(f"{_vars(['ssl_ca_location'])}: cannot read {ca}")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """``DATAFLOW_KAFKA_<FIELD>`` (empty values ignored); a bad one is a ``ConfigError``
        naming the variable, never quoting a value."""
        values = env_values(cls.model_fields, ENV_PREFIX, env)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(x) for x in e['loc']).upper()}: {e['msg']}"
                if e["loc"] else redact(e["msg"].removeprefix("Value error, "))
                for e in exc.errors())
            raise ConfigError(f"kafka settings: {problems}") from None

    def librdkafka(self) -> dict[str, Any]:
        """The confluent-kafka (librdkafka) properties for these settings."""
        conf: dict[str, Any] = {"security.protocol": self.security_protocol.lower()}
        if self.sasl:
            assert self.sasl_password is not None
            conf.update({"sasl.mechanism": self.sasl_mechanism,
                         "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password.get_secret_value()})
        if self.tls:
            conf["ssl.endpoint.identification.algorithm"] = "https"
            if self.ssl_ca_location is not None:
                conf["ssl.ca.location"] = str(self.ssl_ca_location)
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for Python clients (aiokafka); None without TLS."""
        if not self.tls:
            return None
        try:
            return ssl.create_default_context(
                cafile=None if self.ssl_ca_location is None else str(self.ssl_ca_location))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"kafka settings: DATAFLOW_KAFKA_SSL_CA_LOCATION: {exc}") from None


def kafka_config(bootstrap: str, conf: Mapping[str, Any] | None = None, *,
                 security: KafkaSecurity | None = None) -> dict[str, Any]:
    """A confluent-kafka client's config: ``bootstrap``, the security settings (default:
    this process's ``DATAFLOW_KAFKA_*``), then ``conf``. Every client DataFlow builds
    starts here."""
    security = KafkaSecurity.from_env() if security is None else security
    return {"bootstrap.servers": bootstrap, **security.librdkafka(), **(conf or {})}


#: librdkafka errors that no retry mends: the settings are wrong
_FATAL = {"_AUTHENTICATION": "SASL authentication failed", "_SSL": "TLS failed"}


def check_access(bootstrap: str, security: KafkaSecurity | None = None,
                 wait_s: float = 10.0) -> bool:
    """Connect once with ``security``: True when the brokers answered within ``wait_s``,
    False when none did (a Kafka that is away is waited for elsewhere); a broker that
    refuses the credentials or a certificate that does not verify is a ``ConfigError``
    at once (librdkafka would otherwise retry forever). Plaintext settings: not checked."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    security = KafkaSecurity.from_env() if security is None else security
    if security.security_protocol == "PLAINTEXT":
        return True
    errors: list[KafkaError] = []
    admin = AdminClient(kafka_config(bootstrap, {"error_cb": errors.append, "log_level": 0},
                                     security=security))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if admin.list_topics(timeout=0.5).brokers:
                return True
        except KafkaException:
            pass
        admin.poll(0)
        for err in errors:
            if err.name() in _FATAL:
                who = (f" as {security.sasl_username!r} ({security.sasl_mechanism})"
                       if err.name() == "_AUTHENTICATION" else "")
                raise ConfigError(f"kafka {bootstrap}: {_FATAL[err.name()]}{who}: "
                                  f"{redact(err.str())} (check DATAFLOW_KAFKA_*)")
        if time.monotonic() > deadline:
            return False
