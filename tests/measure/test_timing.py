from edge_cls.measure.timing import RoundRobinTiming, round_robin


def test_round_robin_interleaves_the_candidates():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timings = round_robin(calls, rounds=3, block=3, warmup=1)
    assert set(timings) == {"a", "b"} and all(len(t.rounds_ms) == 3 for t in timings.values())
    measured = order[4:]  # after the warm-up and the one probe call of each
    assert measured == ["a", "a", "a", "b", "b", "b"] * 3


def test_large_candidates_get_smaller_blocks():
    import time

    calls = {"slow": lambda: time.sleep(0.01)}
    started = time.perf_counter()
    round_robin(calls, rounds=2, block=100, warmup=0, max_seconds=0.2)
    assert time.perf_counter() - started < 1.0  # 2 rounds x 100 calls x 10 ms would take 2 s


def test_spread_and_paired_wins():
    fast = RoundRobinTiming((1.0, 1.1, 0.9, 1.0))
    slow = RoundRobinTiming((2.0, 1.0, 2.0, 2.0))
    assert fast.p50_ms == 1.0 and fast.rounds_faster_than(slow) == 3
    assert 0 < fast.spread < 0.2
