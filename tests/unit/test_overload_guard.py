"""The overload guard's side of shedding: a read that leaves more than
limits.overload_backlog_bytes unread makes the core shed every new call while overloaded,
and a read that leaves none ends that."""

from __future__ import annotations

from sipserver.config.loader import parse_config
from sipserver.proxy.core import SipCore
from sipserver.server.live_config import LiveConfig
from sipserver.server.overload import OverloadGuard
from tests.configs import table


def _guard(backlog_bytes: int) -> tuple[OverloadGuard, SipCore]:
    config = parse_config(
        table("server", {"fqdn": "sip.example.test"})
        + table("limits", {"overload_backlog_bytes": backlog_bytes})
    )
    core = SipCore(config)
    return OverloadGuard(core, LiveConfig(config)), core


def test_a_backlog_over_the_limit_sheds_every_new_call_only_while_overloaded() -> None:
    guard, core = _guard(16384)
    guard.note_backlog(20000)
    assert not core.shedding_all  # not overloaded: a backlog alone sheds nothing
    assert guard.backlogs == 1  # but it counts towards entering overload
    core.set_overloaded(True, 0.3)
    guard.note_backlog(16000)
    assert not core.shedding_all  # under the limit: the share decides
    guard.note_backlog(20000)
    assert core.shedding_all
    assert core.would_shed("INVITE", in_dialog=False)
    assert not core.would_shed("INVITE", in_dialog=True)  # admitted calls go on
    assert not core.would_shed("BYE", in_dialog=False)
    guard.note_backlog(0)
    assert not core.shedding_all
    guard.note_backlog(20000)
    core.set_overloaded(False)
    assert not core.shedding_all


def test_with_no_backlog_limit_the_busy_loop_alone_decides_and_nothing_surges() -> None:
    guard, core = _guard(0)
    core.set_overloaded(True, 0.3)
    guard.note_backlog(1 << 20)
    assert not core.shedding_all


def test_a_deep_backlog_after_a_busy_window_starts_overload_at_once() -> None:
    """Four times the backlog limit unread: no second busy window is waited for, and the
    read's own call is already shed; the same backlog with a loop that had room is not."""
    guard, core = _guard(16384)
    guard.busy = 0.5
    guard.note_backlog(5 * 16384)
    assert not core.overloaded
    guard.busy = 0.99
    guard.note_backlog(3 * 16384)
    assert not core.overloaded  # a backlog, but not a deep one
    guard.note_backlog(5 * 16384)
    assert core.overloaded and core.shedding_all
    assert core.would_shed("INVITE", in_dialog=False)
