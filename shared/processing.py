"""The register of processing (GDPR Art. 30), declared in code: each service lists in
``services/<name>/processing.py`` what personal data it keeps, why, on which lawful basis, for how
long and who receives it. The consent service serves the aggregate."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Processing:
    service: str
    activity: str
    personal_data: tuple[str, ...]
    purpose: str
    lawful_basis: str
    retention: str
    recipients: tuple[str, ...]


def register(services: list[str]) -> dict:
    """The declarations of ``services``; a configured service without declarations is listed as
    undeclared rather than silently left out."""
    entries, undeclared = [], []
    for name in services:
        try:
            module = importlib.import_module(f"services.{name}.processing")
        except ModuleNotFoundError:
            undeclared.append(name)
            continue
        entries.extend(asdict(d) for d in module.DECLARATIONS)
    return {"controller_note": "Voucherstream keeps pseudonymous customer ids only; the shop maps them to people.",
            "activities": entries, "undeclared_services": undeclared}
