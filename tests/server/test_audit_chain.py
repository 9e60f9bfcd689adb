"""The trail's record MAC: the keyed fast form agrees with plain HMAC-SHA256 for every key length."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from server.audit_chain import GENESIS, RecordMac, canonical, mac_of


@pytest.mark.parametrize("key", [b"", b"k", b"k" * 32, bytes(range(64)), b"long key " * 20])
def test_the_keyed_record_mac_is_plain_hmac_sha256_over_prev_and_the_canonical_record(key: bytes) -> None:
    keyed = RecordMac(key)
    prev = GENESIS
    for body in ({"seq": 1, "event": "start"}, {"seq": 2, "text": "ünïcode \n"}, {"seq": 3, "blob": "x" * 5000}):
        raw = canonical(body)
        expected = hmac.new(key, prev.encode() + b"\n" + raw, hashlib.sha256).hexdigest()
        assert keyed(prev, raw) == mac_of(key, prev, raw) == expected
        prev = expected
