"""Settings shared by every service. Each service adds its own class with its own env prefix
(``CONSENT_``, ``ISSUANCE_`` ...); the infrastructure below is read from ``VOUCHERSTREAM_*`` so one
environment configures all four. Every default works on the local stack (`make up`). An empty
variable counts as unset: docker-compose and the Helm chart pass every setting, most of them empty."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.tracing import TracingSettings


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHERSTREAM_KAFKA_", extra="ignore", env_ignore_empty=True)

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = Field("", description="prepended to every topic name (tests, shared clusters)")
    max_batch: int = Field(500, ge=1, description="records per getmany batch")
    poll_timeout_ms: int = Field(100, ge=1)
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    linger_ms: int = Field(5, ge=0)
    # A consumer's fetch waits at the broker until this much is there or this long has passed. At a
    # low or moderate rate a service then handles a batch per wait instead of one per record or
    # two, each paying its transaction, its commits and its relay round: on two cores that per-batch
    # cost, not the records, was what filled the machine (docs/benchmarks.md, "Batches per second").
    fetch_min_bytes: int = Field(64 * 1024, ge=1, description="bytes a consumer's fetch waits for at the broker")
    fetch_max_wait_ms: int = Field(50, ge=0, description="how long the broker may hold a consumer's fetch waiting "
                                   "for fetch_min_bytes: the most it adds to each consuming hop at a low rate")
    # Security: every client in the project (services, outbox recovery, `make topics`, the CLI,
    # benches, tests) connects through `client_options()`, so these are the only place to set it.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how clients talk to the brokers; managed clusters need SASL_SSL (or SSL with a "
        "client certificate)")
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="with SASL_*: SCRAM for self-run clusters, MSK and Aiven; PLAIN for Confluent "
        "Cloud API keys (only over TLS)")
    sasl_username: str = Field("", description="with SASL_*: this client's principal (one per service)")
    sasl_password: SecretStr = Field(SecretStr(""), description="with SASL_*: its password")
    ssl_cafile: str = Field("", description="with SSL/SASL_SSL: the CA that signed the brokers' certificates "
                            "(empty: the system's trusted CAs, right for MSK and Confluent Cloud)")
    ssl_certfile: str = Field("", description="mutual TLS: this client's certificate (PEM)")
    ssl_keyfile: str = Field("", description="mutual TLS: its private key (PEM)")
    ssl_key_password: SecretStr = Field(SecretStr(""), description="mutual TLS: the private key's password, if any")
    ssl_check_hostname: bool = Field(True, description="verify that the broker's certificate names the host "
                                     "connected to (leave on outside a test rig)")
    # Replication, applied by `make topics` to every topic it creates and reported where it differs.
    replication_factor: int = Field(1, ge=1, description="replicas of every registry topic (3 in production)")
    min_insync_replicas: int = Field(1, ge=1, description="replicas that must have a write before it is "
                                     "acknowledged (acks=all); replication_factor - 1 in production")
    dlq_replication_factor: int | None = Field(None, ge=1, description="replicas of the dead-letter topics "
                                               "(default: replication_factor)")

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @model_validator(mode="after")
    def _coherent(self) -> KafkaSettings:
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("mutual TLS needs both VOUCHERSTREAM_KAFKA_SSL_CERTFILE and VOUCHERSTREAM_KAFKA_SSL_KEYFILE")
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas ({self.min_insync_replicas}) cannot exceed replication_factor "
                             f"({self.replication_factor}): no write could ever be acknowledged")
        return self

    def client_options(self, **overrides) -> dict:
        """Keyword arguments for any aiokafka client (producer, consumer, admin): the bootstrap
        servers and the security settings, plus ``overrides``."""
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password.get_secret_value()):
            # (checked here, not at construction: a service's own login, e.g. CONSENT_KAFKA_USERNAME,
            # may complete the shared settings)
            raise ValueError(f"VOUCHERSTREAM_KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs a login: "
                             "VOUCHERSTREAM_KAFKA_SASL_USERNAME and VOUCHERSTREAM_KAFKA_SASL_PASSWORD (or the "
                             "service's own <SERVICE>_KAFKA_USERNAME and <SERVICE>_KAFKA_PASSWORD)")
        options: dict = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            options |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                        "sasl_plain_password": self.sasl_password.get_secret_value()}
        return options | overrides

    def ssl_context(self):
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(cafile=self.ssl_cafile or None, certfile=self.ssl_certfile or None,
                                     keyfile=self.ssl_keyfile or None,
                                     password=self.ssl_key_password.get_secret_value() or None)
        context.check_hostname = self.ssl_check_hostname
        return context

    def librdkafka_config(self) -> dict[str, str]:
        """The same connection for librdkafka clients (kcat ``-X``, confluent-kafka)."""
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol.lower()}
        if self.security_protocol.startswith("SASL"):
            conf |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                     "sasl.password": self.sasl_password.get_secret_value()}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
            for key, value in (("ssl.ca.location", self.ssl_cafile), ("ssl.certificate.location", self.ssl_certfile),
                               ("ssl.key.location", self.ssl_keyfile),
                               ("ssl.key.password", self.ssl_key_password.get_secret_value())):
                if value:
                    conf[key] = value
        return conf

    def with_user(self, username: str, password: str) -> KafkaSettings:
        """The same connection as another SASL principal (a service's own login)."""
        return self.model_copy(update={"sasl_username": username, "sasl_password": SecretStr(password)})


class PostgresSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHERSTREAM_POSTGRES_", extra="ignore", env_ignore_empty=True)

    dsn: SecretStr = SecretStr("postgresql://voucherstream:voucherstream@127.0.0.1:5432/voucherstream?sslmode=disable")
    pool_min: int = Field(2, ge=1)
    pool_max: int = Field(10, ge=1)
    command_timeout_s: float = Field(30.0, gt=0)


class DataKeySettings(BaseSettings):
    """The per-customer data keys that seal personal fields on Kafka (``shared.datakeys``)."""

    model_config = SettingsConfigDict(env_prefix="VOUCHERSTREAM_DATA_", extra="ignore", env_ignore_empty=True)

    key: SecretStr = Field(SecretStr("local-dev-data-key-change-me"),
                           description="wraps every customer's data key in the key store (the same in every service)")
    previous_keys: list[SecretStr] = Field(default_factory=list, description="earlier wrapping keys, while one rotates")
    keystore_schema: str = Field("voucherstream_keys", description="PostgreSQL schema of the key store, shared by "
                                 "every service")
    cache_size: int = Field(100_000, ge=100, description="data keys kept in memory per process")
    cache_ttl_s: float = Field(60.0, gt=0, description="how long a data key is used from memory: an erasure reaches "
                               "the processes that did not handle it within this time")


class ServiceSettings(BaseSettings):
    """Base of each service's settings; subclasses set ``env_prefix`` and ``service``."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    service: str = "voucherstream"
    environment: Literal["development", "production"] = Field(
        "production", validation_alias=AliasChoices("VOUCHERSTREAM_ENVIRONMENT", "environment"),
        description="development allows the built-in secrets of the local stack; anything else needs real ones")
    schema_name: str = Field("", description="PostgreSQL schema; defaults to the service name")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"
    http_workers: int = Field(1, ge=1, le=16, description="HTTP worker processes; each is a full instance of the "
                              "service (its consumers join the group, one relays the outbox at a time)")
    http_max_body_bytes: int = Field(64 * 1024, ge=1024, description="request bodies over this are refused with "
                                     "413 before they are read")
    consumer_group: str = Field("", description="overrides the consumer group (default: the service name)")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    data: DataKeySettings = Field(default_factory=DataKeySettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    postgres_dsn: SecretStr | None = Field(None, description="this service's own database login (a role from "
                                           "`voucherstream db grant`); default: VOUCHERSTREAM_POSTGRES_DSN")
    kafka_username: str = Field("", description="this service's own Kafka principal (its ACLs: `voucherstream "
                                "acls`); default: VOUCHERSTREAM_KAFKA_SASL_USERNAME")
    kafka_password: SecretStr = Field(SecretStr(""), description="that principal's password")

    @model_validator(mode="after")
    def _own_login(self) -> ServiceSettings:
        if self.postgres_dsn is not None and self.postgres.dsn != self.postgres_dsn:
            self.postgres = self.postgres.model_copy(update={"dsn": self.postgres_dsn})
        if self.kafka_username:
            self.kafka = self.kafka.with_user(self.kafka_username, self.kafka_password.get_secret_value())
        return self

    def problems(self) -> list[str]:
        """What stops this service from starting outside development (a service adds its own)."""
        return secret_problems(self)

    @property
    def db_schema(self) -> str:
        return self.schema_name or self.service

    @property
    def group_id(self) -> str:
        """The consumer group: the service's one identifier (plus the topic prefix in tests)."""
        return self.kafka.topic_prefix + (self.consumer_group or self.service)


MIN_SECRET_CHARS = 32


class InsecureSettings(ValueError):
    """Outside development: a key is missing, a known default or too short, or a setting would
    make the service answer partially (:meth:`ServiceSettings.problems`)."""


def secret_problems(settings: ServiceSettings) -> list[str]:
    """What is wrong with the service's keys (its own ``SecretStr`` settings named ``key``,
    ``*_key`` or ``*_keys``, and the data keys'), one line each; nothing in development."""
    if settings.environment == "development":
        return []
    return _key_problems(settings) + _key_problems(settings.data)


def _key_problems(settings: BaseSettings) -> list[str]:
    prefix = settings.model_config.get("env_prefix", "")
    problems = []
    for name, field in type(settings).model_fields.items():
        if not (name == "key" or name.endswith(("_key", "_keys"))):
            continue
        value = getattr(settings, name)
        default = field.default
        known = {d.get_secret_value() for d in (default if isinstance(default, list) else [default])
                 if isinstance(d, SecretStr)}
        for secret in value if isinstance(value, list) else [value]:
            if not isinstance(secret, SecretStr):
                continue
            text, env = secret.get_secret_value(), (prefix + name).upper()
            if not text:
                problems.append(f"{env} is not set")
            elif text in known or "change-me" in text:
                problems.append(f"{env} is a known default")
            elif len(text) < MIN_SECRET_CHARS:
                problems.append(f"{env} is shorter than {MIN_SECRET_CHARS} characters")
    return problems


def require_safe_settings(settings: ServiceSettings) -> None:
    """Raises :class:`InsecureSettings` naming every problem (keys, and what a service adds)."""
    if problems := settings.problems():
        raise InsecureSettings(
            f"{settings.service} refuses to start: {'; '.join(problems)}. Keys must be random secrets of at least "
            f"{MIN_SECRET_CHARS} characters (`openssl rand -base64 32`; docs/operations.md, \"Secrets\"); "
            "VOUCHERSTREAM_ENVIRONMENT=development allows the built-in ones on a developer's machine.")
