"""Sealing: under a rotated key list, and for one recipient."""

import pytest
from cryptography.exceptions import InvalidTag

from shared import sealing


def test_a_sealed_value_opens_under_any_key_it_was_sealed_with_and_no_other():
    old, new, other = (sealing.derive_key(s, "t") for s in ("old", "new", "other"))
    sealed = sealing.seal(old, b"code", b"v-1")
    assert sealing.unseal_any([new, old], sealed, b"v-1") == b"code"
    with pytest.raises(InvalidTag):
        sealing.unseal_any([new, other], sealed, b"v-1")
    with pytest.raises(InvalidTag):  # bound to its context
        sealing.unseal_any([new, old], sealed, b"v-2")


def test_sealed_for_a_recipient_opens_only_with_its_private_key_and_context():
    private, public = sealing.new_recipient()
    stranger, _ = sealing.new_recipient()
    sealed = sealing.seal_for(public, b"part", b"r-1/issuance")
    assert sealing.open_sealed(private, sealed, b"r-1/issuance") == b"part"
    for key, context in ((stranger, b"r-1/issuance"), (private, b"r-1/segmentation")):
        with pytest.raises(InvalidTag):
            sealing.open_sealed(key, sealed, context)
