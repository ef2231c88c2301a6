"""Generates docs/events.md, the event contract, from the models and the topic registry:
``python -m shared.docs > docs/events.md`` (a test fails when the file is stale)."""

from __future__ import annotations

import json

from shared import events as ev
from shared.topics import DAY_MS, TOPICS

HEADER = """# The event contract

Generated from `shared/events.py` and `shared/topics.py` by `python -m shared.docs`; do not edit.

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
            out.append("```json\n" + json.dumps(schema, indent=2, sort_keys=True) + "\n```\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
