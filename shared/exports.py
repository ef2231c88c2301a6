"""A service's answer to an export request, as every service gives it: its part sealed for the
consent service (the request's ``recipient_key``), so the customer's data never crosses Kafka
readable by anyone else — and stays unreadable in the log once consent deletes that request's
private key (on delivery, or after CONSENT_EXPORT_RETENTION_DAYS)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from shared import events as ev
from shared import sealing


def context(request_id: str, service: str) -> bytes:
    """What a sealed part is bound to: it cannot pass for another request's or service's part."""
    return f"{request_id}/{service}".encode()


def answer(request: ev.ExportRequested, service: str, data: dict[str, Any], now: datetime) -> ev.ExportCompleted:
    if request.recipient_key is None:  # an older consent service: it cannot open a sealed part
        return ev.ExportCompleted(request_id=request.request_id, customer_id=request.customer_id, service=service,
                                  completed_at=now, data=data)
    sealed = sealing.seal_for(request.recipient_key, orjson.dumps(data, default=str),
                              context(request.request_id, service))
    return ev.ExportCompleted(request_id=request.request_id, customer_id=request.customer_id, service=service,
                              completed_at=now, sealed=sealed)


def open_part(private: bytes, part: ev.ExportCompleted) -> dict[str, Any]:
    """The data of a part (sealed, or in clear from an older service)."""
    if part.sealed is None:
        return part.data
    return orjson.loads(sealing.open_sealed(private, part.sealed, context(part.request_id, part.service)))
