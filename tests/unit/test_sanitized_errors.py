"""What logs and dead-letter headers say about a failure never quotes the input."""

from __future__ import annotations

import asyncpg

from shared.events import ContractError
from shared.kafka import sanitized


def test_an_exception_is_named_by_its_type_and_codes_never_by_its_message():
    unique = asyncpg.exceptions.UniqueViolationError("Key (customer_id)=(alice@example.com) already exists")
    assert sanitized(unique) == "UniqueViolationError, sqlstate 23505"
    assert sanitized(ValueError("alice@example.com is not valid")) == "ValueError"
    assert sanitized(ContractError("invalid_data", "data.purpose: Input should be 'email'")) == \
        "invalid_data: data.purpose: Input should be 'email'"
