"""Pure privacy-request decisions: pseudonyms, progress, bundles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.erasure import subject_hash  # noqa: F401 - part of this module's surface


@dataclass(frozen=True, slots=True)
class Part:
    service: str
    completed_at: datetime
    detail: dict[str, Any]  # an erasure's counts; an export's data once opened (see ConsentHandlers.opened)
    sealed: bytes | None = None  # an export's data as kept


def progress(expected: list[str], parts: dict[str, Part]) -> dict[str, dict[str, Any]]:
    """Per expected service: ``pending`` or ``completed`` with its time. Answers from services
    that are not expected are ignored (they cannot complete a request)."""
    out = {}
    for service in expected:
        part = parts.get(service)
        out[service] = ({"status": "completed", "completed_at": part.completed_at.isoformat()}
                        if part else {"status": "pending", "completed_at": None})
    return out


def is_complete(expected: list[str], parts: dict[str, Part]) -> bool:
    return all(service in parts for service in expected)


def export_bundle(request_id: str, customer_id: str | None, expected: list[str], parts: dict[str, Part],
                  generated_at: datetime) -> dict[str, Any]:
    """The access/portability answer: one machine-readable document, a section per service."""
    return {
        "request_id": request_id,
        "customer_id": customer_id,
        "generated_at": generated_at.isoformat(),
        "format": "voucherstream.export.v1",
        "services": {s: parts[s].detail for s in expected},
    }
