"""The issuance service's keys, derived once from its settings: the code hash keys (the current
one hashes, earlier ones still find codes issued before a rotation), the on-site code seal keys,
the outbox seal keys and the pseudonym key. Handed to what uses them, nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from services.issuance import codes
from services.issuance.settings import IssuanceSettings
from shared import sealing
from shared.erasure import subject_hash


@dataclass(frozen=True)
class IssuanceKeys:
    hash_key: bytes
    previous_hash_keys: tuple[bytes, ...]
    seal_keys: tuple[bytes, ...]  # on-site codes: the first seals, every one opens
    outbox_keys: tuple[bytes, ...]  # delivery requests in the outbox: the first seals, every one opens
    pseudonym_key: bytes

    @classmethod
    def of(cls, settings: IssuanceSettings) -> IssuanceKeys:
        seal_secrets = [k.get_secret_value() for k in [settings.code_seal_key, *settings.code_seal_previous_keys]]
        return cls(hash_key=settings.code_hash_key.get_secret_value().encode(),
                   previous_hash_keys=tuple(k.get_secret_value().encode() for k in settings.code_hash_previous_keys),
                   seal_keys=tuple(codes.seal_key(s) for s in seal_secrets),
                   outbox_keys=tuple(sealing.derive_key(s, "outbox") for s in seal_secrets),
                   pseudonym_key=settings.pseudonym_key.get_secret_value().encode())

    @property
    def seal_key(self) -> bytes:
        return self.seal_keys[0]

    @property
    def outbox_key(self) -> bytes:
        return self.outbox_keys[0]

    def code_hashes(self, code: str) -> list[bytes]:
        """The code's hash under the current key, then under each earlier one."""
        return [codes.code_hash(k, code) for k in (self.hash_key, *self.previous_hash_keys)]

    def pseudonym(self, customer_id: str) -> str:
        """What stands in for an erased customer's id."""
        return "erased-" + subject_hash(self.pseudonym_key, customer_id)[:32]
