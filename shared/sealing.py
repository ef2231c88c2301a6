"""Authenticated encryption (AES-GCM) for the few secrets the engine must be able to read back
(on-site codes, delivery requests waiting in the outbox), under keys kept in settings, never in
the database. A copy of the database alone therefore yields no spendable code."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def derive_key(secret: str, purpose: str) -> bytes:
    return hashlib.sha256(f"voucherstream:{purpose}\x00".encode() + secret.encode()).digest()


def seal(key: bytes, plaintext: bytes, context: bytes = b"") -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, context: bytes = b"") -> bytes:
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], context)
