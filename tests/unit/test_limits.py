from collections.abc import Callable

from sipserver.transport.limits import Admission, ConnectionTable


def admitted(result: Admission | str) -> Admission:
    assert isinstance(result, Admission), result
    return result


def noting(into: list[int], value: int) -> Callable[[str], None]:
    """An eviction callback that notes which connection went."""
    return lambda _: into.append(value)


def noting_why(into: list[tuple[int, str]], value: int) -> Callable[[str], None]:
    return lambda why: into.append((value, why))


def test_total_and_per_address_caps_are_counted_and_released() -> None:
    table = ConnectionTable(max_total=3, max_per_address=2)
    first = admitted(table.admit("192.0.2.1"))
    admitted(table.admit("192.0.2.1"))
    refusal = table.admit("192.0.2.1")
    assert isinstance(refusal, str) and "max_connections_per_address" in refusal
    admitted(table.admit("192.0.2.2"))
    refusal = table.admit("192.0.2.3")
    assert isinstance(refusal, str) and "limits.max_connections)" in refusal
    table.release(first)
    table.release(first)  # twice counts once
    admitted(table.admit("192.0.2.3"))
    assert table.total == 3


def test_strangers_have_their_own_budget_and_never_take_the_peers_one() -> None:
    table = ConnectionTable(max_total=2, max_per_address=100, max_unverified=3)
    strangers = [admitted(table.admit("198.51.100.7", "stranger")) for _ in range(3)]
    # Strangers on the SIP port do not block TLS handshakes; a proven peer moves over.
    handshake = admitted(table.admit("192.0.2.10", "handshake"))
    assert table.promote(handshake) is None
    admitted(table.admit("192.0.2.11"))
    assert table.total == 2 and table.open_in("handshake") == 0
    late = admitted(table.admit("192.0.2.12", "handshake"))  # a handshake may start ...
    refusal = table.promote(late)  # ... but the peers' budget is full
    assert refusal is not None and "limits.max_connections)" in refusal
    table.release(late)
    table.release(strangers[0])
    admitted(table.admit("198.51.100.9", "stranger"))
    assert table.open_in("stranger") == 3


def test_past_its_share_an_address_evicts_its_own_oldest_connection() -> None:
    table = ConnectionTable(
        max_total=100, max_per_address=100, max_unverified=10, max_unverified_per_address=4
    )
    evicted: list[int] = []
    for n in range(6):
        admitted(table.admit("198.51.100.7", "handshake", noting(evicted, n)))
    assert evicted == [0, 1] and table.open_in("handshake") == 4
    others = admitted(table.admit("198.51.100.8", "handshake", lambda _: evicted.append(99)))
    admitted(table.admit("198.51.100.7", "stranger"))  # the SIP port's budget is apart
    assert evicted == [0, 1] and others.counted  # another address keeps its place
    table.max_unverified_per_address = 1
    admitted(table.admit("198.51.100.8", "handshake"))
    assert evicted == [0, 1, 99] and table.evicted == 3


def test_a_full_strangers_budget_evicts_its_oldest_connection_for_a_new_one() -> None:
    table = ConnectionTable(max_total=100, max_per_address=100, max_unverified=3)
    evicted: list[tuple[int, str]] = []
    held = [
        admitted(table.admit(f"198.51.100.{n}", "handshake", noting_why(evicted, n)))
        for n in range(3)
    ]
    newcomer = admitted(table.admit("192.0.2.10", "handshake"))
    assert [n for n, _ in evicted] == [0]
    assert "evicted, the oldest of 3 TLS handshakes" in evicted[0][1]
    assert table.open_in("handshake") == 3 and table.evicted == 1
    table.release(held[0])  # the evicted one's own release counts nothing twice
    assert table.open_in("handshake") == 3
    assert table.promote(newcomer) is None  # proven: no longer evictable
    admitted(table.admit("192.0.2.11", "handshake"))  # the room the promotion left
    admitted(table.admit("192.0.2.12", "handshake"))
    assert [n for n, _ in evicted] == [0, 1] and table.total == 1


def test_handshakes_from_peers_addresses_have_a_budget_strangers_never_reach() -> None:
    table = ConnectionTable(max_total=100, max_per_address=100, max_unverified=2)
    for _ in range(2):
        admitted(table.admit("198.51.100.7", "handshake"))
    admitted(table.admit("192.0.2.10", "peer_handshake"))
    admitted(table.admit("192.0.2.10", "peer_handshake"))
    refusal = table.admit("192.0.2.10", "peer_handshake")  # bounded, and never evicting
    assert isinstance(refusal, str) and "TLS handshakes from peers' addresses" in refusal
    assert table.evicted == 0
