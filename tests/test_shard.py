"""HEALTHCHECK_SHARD: n replicas split a fleet, every target exactly once, as Prometheus hashmod."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.model import Target
from exporter.shard import Shard, ShardedProvider, shard_of
from exporter.targets import StaticTargetProvider
from tests.process import exporter, run_cli, samples, value
from tests.servers import target_server


def test_same_arithmetic_as_prometheus_hashmod():
    # Prometheus' relabel tests: hashmod of "baz" with modulus 1000 is 976.
    assert shard_of("baz", 1000) == 976


@given(ids=st.sets(st.text(min_size=1, max_size=20), max_size=50), count=st.integers(1, 9))
def test_n_shards_cover_every_target_exactly_once(ids: set[str], count: int):
    targets = [Target(i, "web", "10.0.0.1", "80") for i in sorted(ids)]
    inner = StaticTargetProvider(targets)
    shares = [
        ShardedProvider(inner, Shard(i, count)).get_health_check_targets() for i in range(count)
    ]
    kept = [t.id for share in shares for t in share]
    assert sorted(kept) == sorted(ids)


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0", "1/2/3", ""])
def test_bad_shard_is_refused(text: str):
    with pytest.raises(ValueError, match=r"i/n|0 <= i < n"):
        Shard.parse(text)


async def test_bad_shard_variable_exits_2_naming_it():
    code, _, err = await run_cli(
        "validate", env={"HEALTHCHECK_TARGETS": "web=10.0.0.1:80", "HEALTHCHECK_SHARD": "2/2"}
    )
    assert code == 2
    assert err.startswith("healthcheck-exporter: error: HEALTHCHECK_SHARD: ")


async def test_two_replicas_split_the_targets_and_say_which_shard_they_are():
    async with target_server() as srv:
        targets = [
            {"id": f"t{i}", "app": "web", "ip": "127.0.0.1", "port": srv.port} for i in range(20)
        ]
        seen: list[set[str]] = []
        for index in range(2):
            env = {"HEALTHCHECK_TARGETS": json.dumps(targets), "HEALTHCHECK_SHARD": f"{index}/2"}
            async with exporter(env) as proc:
                body = await proc.metrics()
            seen.append({dict(k)["target"] for k in samples(body, "healthcheck_target_up")})
            assert value(body, "healthcheck_exporter_build_info", shard=f"{index}/2") == 1
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"t{i}" for i in range(20)}
