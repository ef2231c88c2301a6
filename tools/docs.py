"""Generates docs/events.md, the event contract, from the models and the topic registry:
``python -m tools.docs > docs/events.md`` (a test fails when the file is stale)."""

from __future__ import annotations

import json

from shared.topics import DAY_MS, TOPICS

HEADER = """# The event contract

Generated from `shared/events/` and `shared/topics.py` by `python -m tools.docs --write`
(with the AsyncAPI 3 document `docs/asyncapi.json`); do not edit.

Every message: key = the customer id (the campaign id on campaign topics; partition key on
`segmentation-ticks`), value = a CloudEvents 1.0 envelope in structured JSON mode:

```json
{"specversion": "1.0", "id": "<unique per event>", "type": "<one of the types below>",
 "source": "<who published it>", "time": "2026-11-29T10:00:00Z", "subject": "<the key>",
 "datacontenttype": "application/json", "data": { ... }}
```

Rules: money is `{"amount": <integer minor units>, "currency": "<ISO-4217>"}`; times carry a
zone and are normalised to UTC; customer ids are pseudonymous (letters, digits, `. _ : -`; an
e-mail address is refused); unknown fields are tolerated and dropped; a message that fails
validation goes to `<topic>.dlq` with `dlq.reason`, `dlq.error`, `dlq.source.topic`,
`dlq.source.partition` and `dlq.source.offset` headers. Publish with Kafka's default partitioner
(murmur2 of the key; librdkafka/kcat: `-X topic.partitioner=murmur2_random`), so a customer's
events and consent meet on the same partition.

Personal fields travel sealed (crypto-shredding, docs/privacy.md): the types below that name
*sealed fields* carry them not in `data` but in the extension attribute `sealeddata` (base64 of
an AES-GCM nonce and ciphertext of those fields as a JSON object, bound to the type and the key),
with `datakey`, the id of the customer's data key in the key store. The project seals everything
it writes; the shop seals its own events with `voucherstream seal` (or `publish --seal`), and the
services accept them in clear too.
"""


def render() -> str:
    out = [HEADER]
    for t in TOPICS:
        kind = "compacted" if t.compacted else f"retention {int(t.config()['retention.ms']) // DAY_MS} days"
        out.append(f"## `{t.name}`\n\n{t.description}. Key: `{t.key}`; {t.partitions} partitions; {kind}; "
                   f"produced by {', '.join(t.producers)}; consumed by {', '.join(t.consumers)}.\n")
        for model in t.events:
            schema = model.model_json_schema(mode="serialization")
            out.append(f"### `{model.TYPE}` ({model.__name__})\n")
            if model.__doc__:
                out.append(" ".join(model.__doc__.split()) + "\n")
            if model.PERSONAL:
                out.append("Sealed fields: " + ", ".join(f"`{f}`" for f in model.PERSONAL) + ".\n")
            out.append("```json\n" + json.dumps(schema, indent=2, sort_keys=True) + "\n```\n")
    return "\n".join(out)




def asyncapi() -> dict:
    """An AsyncAPI 3.0 document of every topic, generated from the models (docs/asyncapi.json)."""
    schemas: dict = {}
    messages: dict = {}
    channels: dict = {}
    operations: dict = {}
    for t in TOPICS:
        channel_messages = {}
        for model in t.events:
            schema = model.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            messages[model.__name__] = {
                "name": model.__name__,
                "title": model.TYPE,
                "summary": " ".join((model.__doc__ or t.description).split()),
                "contentType": "application/json",
                "payload": {
                    "type": "object",
                    "required": ["specversion", "id", "type", "source", "time", "data"],
                    "properties": {
                        "specversion": {"const": "1.0"},
                        "id": {"type": "string"},
                        "type": {"const": model.TYPE},
                        "source": {"type": "string"},
                        "time": {"type": "string", "format": "date-time"},
                        "subject": {"type": "string", "description": f"the message key ({t.key})"},
                        "datacontenttype": {"const": "application/json"},
                        "data": {"$ref": f"#/components/schemas/{model.__name__}"},
                        **({"datakey": {"type": "string", "description": "the customer's data key id"},
                            "sealeddata": {"type": "string", "contentEncoding": "base64", "description":
                                           "AES-GCM of {" + ", ".join(model.PERSONAL) + "} as JSON, absent "
                                           "from data"}} if model.PERSONAL else {}),
                    },
                },
            }
            channel_messages[model.__name__] = {"$ref": f"#/components/messages/{model.__name__}"}
        channel_id = t.name.replace("-", "_")
        channels[channel_id] = {"address": t.name, "description": t.description, "messages": channel_messages}
        inbound = t.producers == ("shop",)
        operations[("receive_" if inbound else "send_") + channel_id] = {
            "action": "receive" if inbound else "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"{'the shop publishes' if inbound else ', '.join(t.producers) + ' publishes'}; "
                       f"read by {', '.join(t.consumers)}",
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{name}"} for name in channel_messages],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Voucherstream event contract", "version": "1.0.0",
                 "description": "CloudEvents 1.0 structured JSON on Kafka; generated by `python -m tools.docs`."},
        "servers": {"local": {"host": "127.0.0.1:9092", "protocol": "kafka", "description": "the native local stack"}},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


if __name__ == "__main__":
    import sys
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    if "--write" in sys.argv:
        (docs / "events.md").write_text(render())
        (docs / "asyncapi.json").write_text(json.dumps(asyncapi(), indent=2, sort_keys=True) + "\n")
        print("wrote docs/events.md and docs/asyncapi.json")
    else:
        print(render(), end="")
