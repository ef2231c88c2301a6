"""Kafka client security settings and the ACLs derived from the registry (pure logic; the
secured cluster itself is tested in tests/cluster)."""

from __future__ import annotations

import ssl

import pytest

from services.consent.settings import ConsentSettings
from shared import acls
from shared.settings import KafkaSettings
from shared.topics import BY_NAME, TOPICS, dlq_topic, replication_of, wanted_config


def test_plaintext_by_default_for_the_local_stack():
    options = KafkaSettings(bootstrap="127.0.0.1:9092").client_options(client_id="x")
    assert options == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT", "client_id": "x"}


def test_sasl_ssl_gives_a_verifying_tls_context_and_the_login(tmp_path):
    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="consent",
                          sasl_password="pw")
    options = kafka.client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-256" and options["sasl_plain_username"] == "consent"
    assert options["sasl_plain_password"] == "pw"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    conf = kafka.librdkafka_config()
    assert conf["security.protocol"] == "sasl_ssl" and conf["sasl.username"] == "consent"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"


def test_a_missing_login_a_half_client_certificate_or_an_impossible_isr_is_refused_clearly():
    with pytest.raises(ValueError, match="needs a login"):
        KafkaSettings(security_protocol="SASL_SSL").client_options()
    with pytest.raises(ValueError, match="SSL_KEYFILE"):
        KafkaSettings(security_protocol="SSL", ssl_certfile="/x.pem")
    with pytest.raises(ValueError, match="cannot exceed"):
        KafkaSettings(replication_factor=2, min_insync_replicas=3)
    with pytest.raises(ValueError):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI")


def test_a_service_logs_in_as_itself(monkeypatch):
    monkeypatch.setenv("VOUCHERSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CONSENT_KAFKA_USERNAME", "consent")
    monkeypatch.setenv("CONSENT_KAFKA_PASSWORD", "consent-pw")
    options = ConsentSettings().kafka.client_options()
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("consent", "consent-pw")


def test_replication_per_topic_class():
    kafka = KafkaSettings(replication_factor=3, min_insync_replicas=2, dlq_replication_factor=2)
    topic = BY_NAME["cart-abandoned"]
    assert replication_of(topic, kafka) == (3, 2)
    assert replication_of(dlq_topic(topic), kafka) == (2, 2)
    assert wanted_config(topic, kafka)["min.insync.replicas"] == "2"
    assert replication_of(topic, KafkaSettings()) == (1, 1)


def allowed(principal: str, op: str, topic: str) -> bool:
    return any(a.principal == principal and a.operation == op and a.resource == "TOPIC" and a.name == topic
               for a in acls.derive())


def test_the_shop_writes_only_its_inbound_topics_and_never_reads_the_codes():
    inbound = {t.name for t in TOPICS if t.producers == ("shop",)}
    assert inbound == {"customer-registered", "customer-updated", "order-placed", "cart-abandoned", "consent-changed"}
    assert {a.name for a in acls.derive() if a.principal == "shop" and a.operation == "WRITE"} == inbound
    # (issuance, which wrote the codes and holds them, reads its own tail back after a crash: the outbox)
    assert [p for p in acls.PRINCIPALS if allowed(p, "READ", "delivery-requested")] == ["issuance", "sender"]
    assert {a.name for a in acls.derive() if a.principal == "sender" and a.operation != "DESCRIBE"} \
        == {"delivery-requested", "sender"}


def test_privacy_commands_and_consent_are_written_by_the_consent_service_alone():
    for topic in ("erasure-requested", "export-requested", "consent-state"):
        assert [p for p in acls.PRINCIPALS if allowed(p, "WRITE", topic)] == ["consent"], topic


def test_each_service_reads_what_it_consumes_and_writes_what_it_produces_and_its_dead_letters():
    for t in TOPICS:
        for s in acls.SERVICES:
            assert allowed(s, "READ", t.name) == (s in t.consumers or s in t.producers), (s, t.name)
            assert allowed(s, "WRITE", t.name) == (s in t.producers), (s, t.name)
            if s in t.consumers:
                assert allowed(s, "WRITE", t.dlq)
            if s in t.watchers:
                assert allowed(s, "DESCRIBE", t.name)


def test_under_a_prefix_every_name_carries_it_and_groups_are_per_principal():
    derived = acls.derive("p.")
    assert all(a.name.startswith("p.") for a in derived)
    groups = {(a.principal, a.name, a.pattern) for a in derived if a.resource == "GROUP"}
    assert groups == {(p, "p." + p, "PREFIXED") for p in acls.SERVICES + acls.EXTERNAL}


def test_the_operations_guide_shows_the_acls_the_registry_implies():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs/operations.md").read_text()
    assert acls.markdown_table() in text, "docs/operations.md's ACL table is stale: paste shared.acls.markdown_table()"
