"""The chart's consumer groups, generated from the topic registry (``shared/topics.py``):
each service's group, the topics it consumes and how many partitions bound its replicas. The
chart's ScaledObjects read ``files/consumers.yaml``; a test fails when it is stale.

    python -m deploy.helm [--check]   (make helm-files)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from shared import topics

OUT = Path(__file__).parent / "voucherstream" / "files" / "consumers.yaml"
HEADER = ("# Generated from shared/topics.py by `python -m deploy.helm` (make helm-files); do not edit.\n"
          "# Per service: its consumer group's topics; `partitions` bounds its replicas (a consumer past\n"
          "# a topic's partition count idles); customerKeyedOnly: every topic follows\n"
          "# kafka.customerPartitions (VOUCHERSTREAM_CUSTOMER_PARTITIONS).\n")


def consumer_groups() -> dict[str, dict]:
    """Each service's consumed topics, in registry order, with the smallest partition count."""
    groups: dict[str, dict] = {}
    for t in topics.TOPICS:
        for service in t.consumers:
            if service in topics.EXTERNAL:
                continue
            g = groups.setdefault(service, {"topics": [], "partitions": t.partitions, "customerKeyedOnly": True})
            g["topics"].append(t.name)
            g["partitions"] = min(g["partitions"], t.partitions)
            g["customerKeyedOnly"] &= t.key != "campaign_id"
    return groups


def render() -> str:
    return HEADER + yaml.safe_dump(consumer_groups(), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.helm", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if files/consumers.yaml is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run `python -m deploy.helm`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
