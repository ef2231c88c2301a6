"""Authenticated encryption (AES-GCM) for the few secrets the engine must be able to read back
(on-site codes, delivery requests waiting in the outbox), under keys kept in settings, never in
the database. A copy of the database alone therefore yields no spendable code. And sealing for one
recipient (below)."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def derive_key(secret: str, purpose: str) -> bytes:
    return hashlib.sha256(f"voucherstream:{purpose}\x00".encode() + secret.encode()).digest()


@lru_cache(maxsize=4096)
def _aead(key: bytes) -> AESGCM:
    """Built once per key: building one costs more than sealing an event with it."""
    return AESGCM(key)


def seal(key: bytes, plaintext: bytes, context: bytes = b"") -> bytes:
    nonce = os.urandom(12)
    return nonce + _aead(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, context: bytes = b"") -> bytes:
    return _aead(key).decrypt(sealed[:12], sealed[12:], context)


def unseal_any(keys: Sequence[bytes], sealed: bytes, context: bytes = b"") -> bytes:
    """Under the first of ``keys`` that opens it (the current key, then earlier ones: a rotation)."""
    for key in keys[:-1]:
        try:
            return unseal(key, sealed, context)
        except InvalidTag:
            continue
    return unseal(keys[-1], sealed, context)


# Sealed for one recipient (an export's parts, for the consent service only): an ephemeral X25519
# key agreement with the recipient's public key, HKDF-SHA256, then AES-GCM. Whoever lacks the
# recipient's private key — any other client of the broker, a copy of the log — reads nothing;
# deleting that private key makes every copy unreadable.

def new_recipient() -> tuple[bytes, str]:
    """A fresh key pair: the private key (raw, to keep sealed) and the public key (base64, to send)."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), base64.b64encode(private.public_key().public_bytes_raw()).decode()


def _shared_key(secret: bytes, context: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"voucherstream:sealed-for\x00" + context).derive(secret)


def seal_for(recipient: str, plaintext: bytes, context: bytes = b"") -> str:
    """``plaintext`` readable only with the private key of ``recipient`` (base64 public key)."""
    ephemeral = X25519PrivateKey.generate()
    key = _shared_key(ephemeral.exchange(X25519PublicKey.from_public_bytes(base64.b64decode(recipient))), context)
    return base64.b64encode(ephemeral.public_key().public_bytes_raw() + seal(key, plaintext, context)).decode()


def open_sealed(private: bytes, sealed: str, context: bytes = b"") -> bytes:
    raw = base64.b64decode(sealed)
    secret = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(raw[:32]))
    return unseal(_shared_key(secret, context), raw[32:], context)
