"""Stable splits by content hash: an item lands on the same side of a split whatever else is in the set."""

import hashlib


def in_fraction(fraction: float, *key) -> bool:
    """True for about `fraction` of all keys: blake2b of the key's parts joined by NUL, read as a number in [0, 1)."""
    h = hashlib.blake2b("\0".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction
