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
