"""Writes the register of processing (GDPR Art. 30) as data: each service declares what it keeps
in ``services/<name>/processing.py``; this collects the declarations into
``services/consent/register.json``, which the consent service serves — so no service loads
another's code at run time. A unit test fails when the file is stale.

    python -m tools.processing_register           # write it
    python -m tools.processing_register --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "services" / "consent" / "register.json"


def declarations() -> dict[str, list[dict]]:
    """Every service's declarations, by service, in a stable order."""
    out: dict[str, list[dict]] = {}
    for path in sorted((ROOT / "services").glob("*/processing.py")):
        module = importlib.import_module(f"services.{path.parent.name}.processing")
        out[path.parent.name] = [asdict(d) for d in module.DECLARATIONS]
    return out


def render() -> str:
    return json.dumps(declarations(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not what the code declares")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python -m tools.processing_register", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
