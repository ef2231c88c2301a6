"""Kafka ACLs derived from the topic registry: each service may read exactly what it consumes and
write exactly what it produces; the shop may only write its inbound topics (and read the budget
topics); only the sender may read ``delivery-requested``.

:func:`derive` is pure (the table docs/operations.md prints); :func:`apply` writes it to a
cluster through the Admin API (confluent-kafka; aiokafka has no ACL calls) and reports, or with
``prune`` removes, ACLs of these principals that the registry no longer asks for. Run by
`make cluster-up` and ``voucherstream acls``, as a principal allowed to alter ACLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.settings import KafkaSettings
from shared.topics import DLQ_SUFFIX, EXTERNAL, TOPICS, all_topics

# The principals are the registry's producers and consumers: the services, then the shop and its sender.
SERVICES = tuple(dict.fromkeys(p for t in TOPICS for p in t.producers + t.consumers if p not in EXTERNAL))
PRINCIPALS = SERVICES + EXTERNAL

Operation = Literal["READ", "WRITE", "DESCRIBE"]


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding for a principal (a user name, ``User:`` added when written)."""

    principal: str
    resource: Literal["TOPIC", "GROUP"]
    name: str
    pattern: Literal["LITERAL", "PREFIXED"]
    operation: Operation

    def __str__(self) -> str:
        star = "*" if self.pattern == "PREFIXED" else ""
        return f"User:{self.principal:13} {self.operation:8} {self.resource.lower():5} {self.name}{star}"


def derive(prefix: str = "") -> list[Acl]:
    """Every ACL the registry implies, for topics and groups under ``prefix``. Reading a topic
    (Read) comes with Describe (offsets, metadata); each consumer of a topic may write its
    dead-letter topic; a producer may read back what it wrote (the outbox checks a partition's
    tail after a crash); a watcher may only Describe (log-end offsets). Groups are prefixed by
    the principal's name: a service's consumer groups are its name plus a suffix."""
    acls: set[Acl] = set()

    def topic(principal: str, name: str, *operations: Operation) -> None:
        for op in operations:
            acls.add(Acl(principal, "TOPIC", prefix + name, "LITERAL", op))

    for t in TOPICS:
        for p in t.producers:
            topic(p, t.name, "WRITE", "DESCRIBE", *(() if p in EXTERNAL else ("READ",)))
        for c in t.consumers:
            topic(c, t.name, "READ", "DESCRIBE")
            if c not in EXTERNAL:
                topic(c, t.name + DLQ_SUFFIX, "WRITE", "DESCRIBE")
        for w in t.watchers:
            topic(w, t.name, "DESCRIBE")
    for p in PRINCIPALS:
        if any(p in t.consumers for t in TOPICS):
            acls.add(Acl(p, "GROUP", prefix + p, "PREFIXED", "READ"))
    return sorted(acls)


def admin_config(kafka: KafkaSettings) -> dict[str, str | int | float | bool]:
    config: dict[str, str | int | float | bool] = {**kafka.librdkafka_config(), "client.id": "voucherstream-acls"}
    return config


def apply(kafka: KafkaSettings, prefix: str = "", *, prune: bool = False, timeout_s: float = 30.0,
          report=print) -> dict[str, int]:
    """Creates the derived ACLs (creating an existing one changes nothing) and finds the ACLs of
    the registry's principals the registry does not ask for: reported, or deleted with ``prune``.
    Returns ``{"wanted": n, "created": n, "extra": n, "pruned": n}``."""
    from confluent_kafka.admin import AclBinding, AclBindingFilter, AdminClient

    admin = AdminClient(admin_config(kafka))
    wanted = derive(prefix)
    found = {_from_binding(b) for b in _describe(admin, AclBindingFilter, timeout_s)}
    # Only this deployment's names: another prefix's ACLs on a shared cluster are not extra here.
    ours = {name for name, _ in all_topics(prefix)} | {prefix + p for p in PRINCIPALS}
    have = {a for a in found if a is not None and a.principal in PRINCIPALS and a.name in ours}
    missing = [a for a in wanted if a not in have]
    if missing:
        for future in admin.create_acls([_binding(AclBinding, a) for a in missing],
                                        request_timeout=timeout_s).values():
            future.result()
    extra = sorted(have - set(wanted))
    for a in extra:
        report(f"{'pruned' if prune else 'extra '}  {a}")
    if prune and extra:
        filters = [_binding(AclBindingFilter, a) for a in extra]
        for future in admin.delete_acls(filters, request_timeout=timeout_s).values():
            future.result()
    return {"wanted": len(wanted), "created": len(missing), "extra": len(extra), "pruned": len(extra) if prune else 0}


def remove(kafka: KafkaSettings, prefix: str, *, timeout_s: float = 30.0) -> int:
    """Deletes the ACLs :func:`derive` gives for ``prefix`` (a test's or a retired deployment's)."""
    from confluent_kafka.admin import AclBindingFilter, AdminClient

    if not prefix:
        raise ValueError("refusing to remove the production ACLs (empty prefix)")
    admin = AdminClient(admin_config(kafka))
    wanted = derive(prefix)
    for future in admin.delete_acls([_binding(AclBindingFilter, a) for a in wanted], request_timeout=timeout_s).values():
        future.result()
    return len(wanted)


def _binding(cls, a: Acl):
    from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return cls(ResourceType[a.resource], a.name, ResourcePatternType[a.pattern], f"User:{a.principal}", "*",
               AclOperation[a.operation], AclPermissionType.ALLOW)


def _describe(admin, filter_cls, timeout_s: float):
    from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    everything = filter_cls(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                            AclOperation.ANY, AclPermissionType.ANY)
    return admin.describe_acls(everything, request_timeout=timeout_s).result()


def _from_binding(b) -> Acl | None:
    if not b.principal.startswith("User:") or b.permission_type.name != "ALLOW" or b.host != "*" \
            or b.restype.name not in ("TOPIC", "GROUP") or b.operation.name not in ("READ", "WRITE", "DESCRIBE") \
            or b.resource_pattern_type.name not in ("LITERAL", "PREFIXED"):
        return None
    return Acl(b.principal.removeprefix("User:"), b.restype.name, b.name, b.resource_pattern_type.name,
               b.operation.name)


def markdown_table() -> str:
    """Per principal, what it may do (docs/operations.md)."""
    lines = ["| principal | reads | writes | describes only | groups |", "|---|---|---|---|---|"]
    acls = derive()
    for p in PRINCIPALS:
        mine = [a for a in acls if a.principal == p]

        def names(op: str, mine=mine) -> str:
            return ", ".join(f"`{a.name}`" for a in mine if a.resource == "TOPIC" and a.operation == op) or "—"
        reads = {a.name for a in mine if a.operation in ("READ", "WRITE")}
        describes = ", ".join(f"`{a.name}`" for a in mine if a.operation == "DESCRIBE" and a.name not in reads) or "—"
        groups = ", ".join(f"`{a.name}*`" for a in mine if a.resource == "GROUP") or "—"
        lines.append(f"| `{p}` | {names('READ')} | {names('WRITE')} | {describes} | {groups} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m shared.acls", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default=None, help="topics and groups under this prefix (default: "
                        "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX)")
    parser.add_argument("--prune", action="store_true", help="delete these principals' ACLs the registry does not ask for")
    parser.add_argument("--list", action="store_true", help="print the ACLs and exit (no cluster needed)")
    args = parser.parse_args(argv)
    kafka = KafkaSettings()
    prefix = kafka.topic_prefix if args.prefix is None else args.prefix
    if args.list:
        print("\n".join(str(a) for a in derive(prefix)))
        return 0
    try:
        outcome = apply(kafka, prefix, prune=args.prune)
    except Exception as exc:
        print(f"error: could not apply the ACLs on {kafka.bootstrap} as {kafka.sasl_username or 'anonymous'}: {exc}",
              file=sys.stderr)
        return 1
    print(f"ACLs: {outcome['wanted']} wanted, {outcome['created']} created, {outcome['extra']} not in the registry"
          + (f", {outcome['pruned']} pruned" if args.prune else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
