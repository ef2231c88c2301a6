"""docs/asyncapi.json is generated from the models and accepted by the AsyncAPI project's own
parser (@asyncapi/parser from npm, installed once into tools/asyncapi/node_modules)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from shared.topics import TOPICS
from tools.docs import asyncapi

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "asyncapi"


def test_the_asyncapi_document_is_current_and_the_asyncapi_parser_accepts_it():
    doc = ROOT / "docs" / "asyncapi.json"
    assert json.loads(doc.read_text()) == asyncapi(), "docs/asyncapi.json is stale: python -m tools.docs --write"
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "Node.js and npm are part of this machine kind"
    if not (TOOL / "node_modules" / "@asyncapi" / "parser").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TOOL, check=True, capture_output=True, timeout=300)
    done = subprocess.run([node, "validate.mjs", str(doc)], cwd=TOOL, capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and report["valid"], report
    assert report["channels"] == len(TOPICS) and report["errors"] == []
