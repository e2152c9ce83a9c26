"""Sharding a fleet over replicas with no coordination, as Prometheus `hashmod` does.

Replica `i` of `n` keeps the targets for which md5(id), last 8 bytes read big-endian, modulo `n`
is `i`: the same arithmetic as Prometheus's `hashmod` relabel action, so the split can be
reproduced in PromQL-side relabelling. The id, not the address, is hashed so that a target that
moves stays on its replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.model import Target, TargetProvider


def shard_of(target_id: str, modulus: int) -> int:
    digest = hashlib.md5(target_id.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`i/n` with 0 <= i < n; raises ValueError saying what is wrong."""
        index, sep, count = text.strip().partition("/")
        if not (sep and index.isdigit() and count.isdigit()):
            raise ValueError(f"expected i/n, e.g. 0/3 (got {text!r})")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count:
            raise ValueError(f"need 0 <= i < n (got {text!r})")
        return shard

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def keeps(self, target: Target) -> bool:
        return shard_of(target.id, self.count) == self.index


class ShardedProvider:
    """Only this replica's share of another provider's targets."""

    def __init__(self, inner: TargetProvider, shard: Shard) -> None:
        self.inner = inner
        self.shard = shard

    def get_health_check_targets(self) -> Sequence[Target]:
        return [t for t in self.inner.get_health_check_targets() if self.shard.keeps(t)]
