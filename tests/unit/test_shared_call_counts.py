"""Call limits that hold for the server as a whole when it runs as several processes: each
process adds the others' calls in progress (learned through the store) to its own, takes
the calls a peer started elsewhere from that peer's bucket, forgets a process that is gone,
and counts alone while the store is away."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from structlog.testing import capture_logs

from sipserver.config.loader import parse_config
from sipserver.proxy.admission import CallCounts
from sipserver.proxy.core import SipCore
from sipserver.server.binding_store import alive_key
from sipserver.server.live_config import LiveConfig
from sipserver.server.local_store import LocalStore
from sipserver.server.shared_call_counts import SharedCallCounts, decode_counts, encode_counts
from sipserver.transport.resp import RespClient, StoreAddress
from tests.unit.test_admission import CALLER, GW2, config, final, invite


def warning(core: SipCore, n: int, now: float = 0.0) -> str | None:
    """The refusal's Warning, or None when the call was admitted."""
    refused = final(core.receive_datagram(invite(n), CALLER, now))
    return None if refused is None else (refused.headers.get("Warning") or "")


def test_the_other_processes_calls_count_against_every_max_calls() -> None:
    core = SipCore(parse_config(config(gw1={"max_calls": 3})))
    limits = core.call_limits
    limits.counted_elsewhere({"w1": CallCounts(2, {"gw1": 2}, {"trunk": 2}, {"gw1": 2})}, 0.0)
    assert warning(core, 1) is None
    assert "Peer gw1 has 3 calls in progress, its max_calls (3)" in (warning(core, 2) or "")
    limits.counted_elsewhere({}, 0.1)  # w1 is gone, and its calls with it
    assert warning(core, 3, 0.1) is None

    plan = SipCore(parse_config(config(plan={"max_calls": 2}, limits={"max_calls": 9})))
    plan.call_limits.counted_elsewhere({"w1": CallCounts(1, {}, {"trunk": 1}, {})}, 0.0)
    assert warning(plan, 1) is None
    assert "Dial plan trunk has 2 calls in progress" in (warning(plan, 2) or "")
    server = SipCore(parse_config(config(limits={"max_calls": 4})))
    server.call_limits.counted_elsewhere(
        {"w1": CallCounts(2, {}, {}, {}), "w2": CallCounts(1, {}, {}, {})}, 0.0
    )
    assert warning(server, 1) is None
    assert "The server has 4 calls in progress" in (warning(server, 2) or "")


def test_calls_a_peer_started_elsewhere_are_taken_from_its_bucket() -> None:
    core = SipCore(parse_config(config(gw1={"max_call_rate": 1.0, "max_call_burst": 5})))
    limits = core.call_limits
    assert warning(core, 1) is None  # 4 tokens left
    # A process seen for the first time: what it started before is not charged.
    limits.counted_elsewhere({"w1": CallCounts(0, {}, {}, {"gw1": 50})}, 0.0)
    assert warning(core, 2) is None  # 3 left
    limits.counted_elsewhere({"w1": CallCounts(0, {}, {}, {"gw1": 53})}, 0.0)  # 3 there: 0 left
    assert "faster than its max_call_rate" in (warning(core, 3) or "")
    # A flood elsewhere costs at most one burst of waiting here, not an hour.
    limits.counted_elsewhere({"w1": CallCounts(0, {}, {}, {"gw1": 5000})}, 0.0)
    assert warning(core, 4, 5.5) is not None  # -5 (the floor) + 5.5 tokens: not yet 1
    assert warning(core, 5, 6.5) is None


def test_alone_again_when_the_store_is_away() -> None:
    core = SipCore(parse_config(config(gw1={"max_calls": 1})))
    core.call_limits.counted_elsewhere({"w1": CallCounts(1, {"gw1": 1}, {}, {})}, 0.0)
    assert warning(core, 1) is not None
    core.call_limits.count_alone()
    assert warning(core, 2) is None


def test_counts_survive_the_store_and_bad_entries_are_ignored() -> None:
    counts = CallCounts(3, {"gw1": 2, "gw2": 1}, {"trunk": 3}, {"gw1": 7})
    assert decode_counts(encode_counts(counts).encode()) == counts
    for bad in (b"", b"[]", b'{"active": 1}', b'{"active":1,"peers":[],"plans":{},"started":{}}'):
        assert decode_counts(bad) is None


async def test_two_processes_share_their_counts_through_the_store(tmp_path: Path) -> None:
    path = str(tmp_path / "store.sock")
    gateway = config(gw1={"max_calls": 3})
    first, second = SipCore(parse_config(gateway)), SipCore(parse_config(gateway))
    address = StoreAddress.parse(f"unix:{path}")
    async with trio.open_nursery() as nursery:
        await nursery.start(LocalStore().serve, path)
        sharers = [
            SharedCallCounts(
                RespClient(address, 1.0),
                owner,
                core.call_limits,
                LiveConfig(core.config),
                heartbeat=True,
            )
            for owner, core in (("w0", first), ("w1", second))
        ]
        for n in (1, 2):
            assert warning(first, n) is None
        assert final(first.receive_datagram(invite(3, GW2), GW2, 0.0), GW2) is None
        for sharer in (*sharers, *sharers):  # each writes, then each reads the other's
            await sharer.exchange()
        assert warning(second, 4) is None  # 2 there and this one: 3
        assert "Peer gw1 has 3 calls in progress" in (warning(second, 5) or "")
        assert second.call_limits.active == 1
        # The first process dies: its alive key goes (the supervisor removes its counts too).
        await sharers[1].client.call(("DEL", alive_key("w0")))
        await sharers[1].exchange()
        assert warning(second, 6) is None
        await sharers[0].client.close()
        await sharers[1].client.close()
        nursery.cancel_scope.cancel()


async def test_a_store_that_goes_away_leaves_each_process_counting_alone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    core = SipCore(parse_config(config(gw1={"max_calls": 1})))
    core.call_limits.counted_elsewhere({"w1": CallCounts(1, {"gw1": 1}, {}, {})}, 0.0)
    sharer = SharedCallCounts(
        RespClient(StoreAddress.parse(f"unix:{tmp_path}/none.sock"), 0.2),
        "w0",
        core.call_limits,
        LiveConfig(core.config),
        heartbeat=False,
    )
    with capture_logs() as logs, trio.move_on_after(1.0):  # virtual time: ten attempts
        await sharer.run()
    unshared = [entry for entry in logs if entry["event"] == "call_counts_unshared"]
    assert len(unshared) == 1  # once, not at every attempt
    assert "calls only" in unshared[0]["effect"]
    assert warning(core, 1) is None
