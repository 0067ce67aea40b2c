"""TCP reassembly of one direction: order, overlaps, retransmissions, wraparound, bounded out-of-order state."""

from __future__ import annotations

import random

from stormguard.features.capture.tcpstream import MAX_OOO_BYTES, TLS, WATCH, Conn, OooBudget


def _half(budget: OooBudget | None = None):
    c = Conn.open((b"\x01" * 4, b"\x02" * 4, 1, 2), 0.0, 1, budget=budget)
    h = c.a
    h.mode = TLS
    return h


def _feed(h, segs) -> bytes:
    out = b""
    for seq, data in segs:
        got = h.accept(seq & 0xFFFFFFFF, data)
        if got:
            out += got
    return out


def test_in_order_out_of_order_and_duplicates() -> None:
    data = bytes(range(256)) * 20
    rng = random.Random(3)
    for start in (0, 1000, 0xFFFFFFFF - 700):  # the last one wraps
        segs = []
        i = 0
        while i < len(data):
            n = rng.randint(1, 300)
            segs.append((start + i, data[i:i + n]))
            i += n
        first, rest = segs[0], segs[1:]
        rng.shuffle(rest)
        rest += rng.sample(segs, 5)  # retransmissions
        # overlapping re-segmentation of a range
        rest.append((start + 50, data[50:400]))
        h = _half()
        h.next_seq = start & 0xFFFFFFFF
        assert _feed(h, [first, *rest]) == data
        assert h.ooo_bytes == 0 and h.conn.budget.used == 0


def test_gap_gives_up_and_releases_budget() -> None:
    budget = OooBudget()
    h = _half(budget)
    h.next_seq = 0
    seq = 100  # bytes 0..99 never arrive
    while h.mode == TLS:
        h.accept(seq, b"x" * 1000)
        seq += 1000
    assert h.mode == WATCH and seq - 100 <= MAX_OOO_BYTES + 1000
    assert budget.used == 0 and h.ooo is None


def test_shared_budget_caps_all_connections() -> None:
    budget = OooBudget(limit=10_000)
    halves = [_half(budget) for _ in range(5)]
    for h in halves:
        h.next_seq = 0
        h.accept(10, b"y" * 3000)  # each holds 3000 bytes out of order
    assert budget.used <= 10_000
    assert sum(h.mode == WATCH for h in halves) >= 1
    assert budget.used == sum(h.ooo_bytes for h in halves)
