"""Voucher codes: drawn from the operating system's CSPRNG, stored only as keyed hashes.

A pattern is text where each ``#`` is one random symbol from the charset and everything else is
literal (``SUMMER-####-####``); without a pattern a code is ``prefix + length symbols + postfix``.
The default — 13 symbols of a 31-symbol alphabet without look-alikes (no 0/O, 1/I/L) — carries
64 bits. Codes are compared case-insensitively and without separators, through their HMAC.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections.abc import Sequence

from shared import sealing

# What a checkout request may send as a code (4-64 letters, digits, spaces, _ or -).
SUBMITTED = r"^[A-Za-z0-9 _-]{4,64}$"
UNAMBIGUOUS = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # 31 symbols: no 0 O 1 I L
MIN_ENTROPY_BITS = 60


def entropy_bits(charset: str, symbols: int) -> float:
    return symbols * math.log2(len(set(charset)))


def symbols_in(pattern: str | None, length: int) -> int:
    return pattern.count("#") if pattern else length


def generate(*, charset: str = UNAMBIGUOUS, length: int = 13, prefix: str = "", postfix: str = "",
             pattern: str | None = None) -> str:
    """One code, its symbols drawn from the OS CSPRNG without modulo bias (:func:`symbols`)."""
    if pattern:
        drawn = iter(symbols(charset, pattern.count("#")))
        return prefix + "".join(next(drawn) if ch == "#" else ch for ch in pattern) + postfix
    return prefix + "".join(symbols(charset, length)) + postfix


def symbols(charset: str, n: int) -> list[str]:
    """``n`` symbols of ``charset``, each uniformly likely: bytes from the OS CSPRNG, one read for
    the whole code (``secrets.choice`` reads once per symbol), a byte at or above the largest
    multiple of the charset's size rejected so that ``byte % size`` has no bias."""
    size = len(charset)
    if not 1 < size <= 256:
        raise ValueError(f"a code's charset needs 2 to 256 symbols, not {size}")
    limit = 256 - 256 % size
    out: list[str] = []
    while len(out) < n:
        out += [charset[b % size] for b in secrets.token_bytes(n - len(out) + 4) if b < limit]
    return out[:n]


def generate_many(n: int, **spec) -> list[str]:
    return [generate(**spec) for _ in range(n)]


def normalize(code: str) -> str:
    """What a customer typed → the canonical form that is hashed: upper case, no spaces or dashes."""
    return "".join(ch for ch in code.upper() if ch not in " -_\t")


def code_hash(key: bytes, code: str) -> bytes:
    """The only form in which a code is stored: HMAC-SHA256 under a secret key, so a copy of the
    database yields no spendable code."""
    return hmac.digest(key, normalize(code).encode(), "sha256")


def seal_key(secret: str) -> bytes:
    return sealing.derive_key(secret, "code-seal")


def seal(key: bytes, code: str, voucher_id: str) -> bytes:
    """On-site vouchers must be shown again later (banners, live chat), so their code is kept
    sealed with AES-GCM under a key from the settings; the voucher id is bound in, so a sealed
    code cannot be moved to another row."""
    return sealing.seal(key, code.encode(), voucher_id.encode())


def unseal(keys: Sequence[bytes], sealed: bytes, voucher_id: str) -> str:
    return sealing.unseal_any(keys, sealed, voucher_id.encode()).decode()
