from sipserver.transport.limits import ConnectionTable


def test_total_and_per_address_caps_are_counted_and_released() -> None:
    table = ConnectionTable(max_total=3, max_per_address=2)
    assert table.admit("192.0.2.1") is None
    assert table.admit("192.0.2.1") is None
    refusal = table.admit("192.0.2.1")
    assert refusal is not None and "max_connections_per_address" in refusal
    assert table.admit("192.0.2.2") is None
    refusal = table.admit("192.0.2.3")
    assert refusal is not None and "limits.max_connections)" in refusal
    table.release("192.0.2.1")
    assert table.admit("192.0.2.3") is None
    assert table.total == 3


def test_strangers_have_their_own_budget_and_never_take_the_peers_one() -> None:
    table = ConnectionTable(max_total=2, max_per_address=100, max_unverified=3)
    for _ in range(3):
        assert table.admit("198.51.100.7", "stranger") is None
    refusal = table.admit("198.51.100.8", "stranger")
    assert refusal is not None and "limits.max_unverified_connections" in refusal
    # Strangers on the SIP port do not block TLS handshakes; a proven peer moves over.
    assert table.admit("192.0.2.10", "handshake") is None and table.promote() is None
    assert table.admit("192.0.2.11") is None
    assert table.total == 2
    assert table.admit("192.0.2.12", "handshake") is None  # a third handshake may start ...
    refusal = table.promote()  # ... but the peers' budget is full
    assert refusal is not None and "limits.max_connections)" in refusal
    table.release("192.0.2.12", "handshake")
    table.release("198.51.100.7", "stranger")
    assert table.admit("198.51.100.9", "stranger") is None
