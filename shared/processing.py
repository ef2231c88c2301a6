"""The register of processing (GDPR Art. 30), declared in code: each service lists in
``services/<name>/processing.py`` what personal data it keeps, why, on which lawful basis, for how
long and who receives it. ``python -m tools.processing_register`` collects the declarations into
data (``services/consent/register.json``) that the consent service serves: no service loads
another's code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Processing:
    service: str
    activity: str
    personal_data: tuple[str, ...]
    purpose: str
    lawful_basis: str
    retention: str
    recipients: tuple[str, ...]


def register(declared: dict[str, list[dict]], services: list[str]) -> dict:
    """The register for ``services`` from the collected declarations (``declared``: by service);
    a configured service without declarations is listed as undeclared rather than left out."""
    return {"controller_note": "Voucherstream keeps pseudonymous customer ids only; the shop maps them to people.",
            "activities": [d for name in services for d in declared.get(name, [])],
            "undeclared_services": [name for name in services if name not in declared]}
