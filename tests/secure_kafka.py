"""A small Kafka broker of its own that requires SASL, over plaintext and over TLS.

The shared stack's broker must not be restarted, so a test of Kafka security starts this
one (``ops._stack.Kafka`` with extra listeners; its PLAINTEXT listener is the broker's
own and no client of the test uses it):

- ``SCRAM``: ``SASL_PLAINTEXT`` with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN;
- ``SECURE``: ``SASL_SSL`` with the same mechanisms, its certificate (``127.0.0.1`` and
  ``localhost``) signed by a test CA made here with ``cryptography`` (a PEM keystore);
- ``TLS``: ``SSL`` (TLS without SASL), the same certificate.

Users: ``USER`` with ``PASSWORD`` for SCRAM-SHA-256 and -512 (``kafka-storage format
--add-scram``) and for PLAIN (in the listener's JAAS line).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ops._stack import Kafka, KafkaListener, StackState

USER = "dataflow-app"
PASSWORD = "kafka-Pw-7f3c9e1a5b"   # distinctive: the tests grep for it
MECHANISMS = "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"


@dataclass(frozen=True)
class SecureKafka:
    broker: Kafka
    ca: Path          # the test CA's certificate (PEM)
    sasl_plaintext: str
    sasl_ssl: str
    ssl: str

    def env(self, mechanism: str | None = "SCRAM-SHA-512", password: str = PASSWORD,
            tls: bool = True) -> dict[str, str]:
        """The ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATAFLOW_KAFKA_*`` a process needs
        (``mechanism`` None: TLS without SASL)."""
        if mechanism is None:
            return {"KAFKA_BOOTSTRAP_SERVERS": self.ssl, "DATAFLOW_KAFKA_SECURITY_PROTOCOL": "SSL",
                    "DATAFLOW_KAFKA_SSL_CA_LOCATION": str(self.ca)}
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.sasl_ssl if tls else self.sasl_plaintext,
               "DATAFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL" if tls else "SASL_PLAINTEXT",
               "DATAFLOW_KAFKA_SASL_MECHANISM": mechanism,
               "DATAFLOW_KAFKA_SASL_USERNAME": USER,
               "DATAFLOW_KAFKA_SASL_PASSWORD": password}
        if tls:
            env["DATAFLOW_KAFKA_SSL_CA_LOCATION"] = str(self.ca)
        return env

    def stop(self) -> None:
        self.broker.stop()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """A test CA and a broker key + certificate chain it signed: (ca.pem, broker.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("dataflow test CA"))
          .issuer_name(_name("dataflow test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    ca_pem = folder / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    broker_pem = folder / "broker.pem"
    broker_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
        + ca.public_bytes(serialization.Encoding.PEM))
    return ca_pem, broker_pem


def start_secure_kafka(home: Path) -> SecureKafka:
    """Start the broker under ``home`` (a fresh folder); ``stop()`` it when done."""
    ca, keystore = make_certificates(home / "tls")
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    plain_jaas = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                  f'user_{USER}="{PASSWORD}";')
    properties = {"sasl.enabled.mechanisms": MECHANISMS,
                  "ssl.keystore.type": "PEM", "ssl.keystore.location": str(keystore)}
    for listener in ("scram", "secure"):
        properties[f"listener.name.{listener}.sasl.enabled.mechanisms"] = MECHANISMS
        properties[f"listener.name.{listener}.scram-sha-256.sasl.jaas.config"] = scram_jaas
        properties[f"listener.name.{listener}.scram-sha-512.sasl.jaas.config"] = scram_jaas
        properties[f"listener.name.{listener}.plain.sasl.jaas.config"] = plain_jaas
    broker = Kafka(
        home, StackState(home / "stack" / "state.json"),
        listeners=(KafkaListener("SCRAM", "SASL_PLAINTEXT"), KafkaListener("SECURE", "SASL_SSL"),
                   KafkaListener("TLS", "SSL")),
        properties=properties,
        scram=(f"SCRAM-SHA-256=[name={USER},password={PASSWORD}]",
               f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"))
    try:
        broker.start()
    except BaseException:
        broker.stop()
        raise
    return SecureKafka(broker, ca, broker.address("SCRAM"), broker.address("SECURE"),
                       broker.address("TLS"))
