import re
from pathlib import Path

from shared.topics import CUSTOMER_PARTITIONS, DAY_MS, EXTERNAL, TOPICS, all_topics

README = Path(__file__).resolve().parents[2] / "README.md"


def test_topics_read_together_share_key_and_partition_count():
    by_key: dict[str, set[int]] = {}
    for t in TOPICS:
        by_key.setdefault(t.key, set()).add(t.partitions)
    assert all(len(counts) == 1 for counts in by_key.values()), by_key
    assert by_key["customer_id"] == {CUSTOMER_PARTITIONS}
    assert by_key["partition_key"] == {CUSTOMER_PARTITIONS}  # segmentation reads ticks with the customer topics


def test_compacted_topics_bound_their_compaction_lag():
    for t in TOPICS:
        conf = t.config()
        if t.compacted:
            assert conf["cleanup.policy"] == "compact"
            assert int(conf["max.compaction.lag.ms"]) <= DAY_MS
        else:
            assert conf["cleanup.policy"] == "delete"
            assert int(conf["retention.ms"]) <= 30 * DAY_MS


def test_inbound_shop_topics_keep_at_most_a_week():
    for t in TOPICS:
        if t.producers == ("shop",):
            assert int(t.config()["retention.ms"]) <= 7 * DAY_MS, t.name


def test_every_consumed_topic_has_a_dead_letter_topic():
    names = {name for name, _ in all_topics()}
    for t in TOPICS:
        if set(t.consumers) - set(EXTERNAL):
            assert t.dlq in names


def test_the_readme_topic_table_equals_the_registry():
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"^\| `([a-z-]+)` \| `(\w+)` \| (\d+) \| ([a-z0-9 ]+) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4).strip())
    expected = {
        t.name: (t.key, t.partitions, "compacted" if t.compacted else f"{int(t.config()['retention.ms']) // DAY_MS} days")
        for t in TOPICS
    }
    assert rows == expected


def test_docs_events_md_is_generated_from_the_models():
    from tools.docs import render

    doc = README.parent / "docs" / "events.md"
    assert doc.read_text() == render(), "docs/events.md is stale: python -m tools.docs > docs/events.md"
