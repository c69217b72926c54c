import pytest

from ajpq.search.record import PolicyRecord, learning_curve


def _record(episode: int, accuracy: float, failed: bool = False) -> PolicyRecord:
    return PolicyRecord(episode=episode, accuracy=accuracy, failed=failed)


def test_learning_curve_is_the_mean_of_each_quarter_in_episode_order():
    # given out of order, with a failure that must not count as accuracy 0
    records = [_record(e, 0.1 * e) for e in (8, 3, 1, 2, 7, 5, 4, 6)]
    records.append(_record(9, 0.0, failed=True))
    assert learning_curve(records) == pytest.approx([0.15, 0.35, 0.55, 0.75])


def test_learning_curve_of_few_or_uneven_records():
    assert learning_curve([]) == []
    assert learning_curve([_record(1, 0.5), _record(2, 0.7)]) == pytest.approx([0.5, 0.7])
    # 6 records in 4 parts: slices of 2, 1, 2, 1 (rounded bounds 0, 2, 3, 4, 6)
    curve = learning_curve([_record(e, float(e)) for e in range(1, 7)])
    assert curve == pytest.approx([1.5, 3.0, 4.0, 5.5])


def test_a_record_carries_the_scores_latency_and_its_spread():
    from ajpq.task.scoring import PolicyScore

    score = PolicyScore(0.9, 1.0, 10.0, 8.0, 1.0, 0.1, 5.0, 1.5, False, 0.0, 0.0, 0.0, 0.0, 0.25)
    record = PolicyRecord.from_score(score)
    assert (record.latency_ms, record.latency_spread_ms) == (1.5, 0.25)
    # a scorer that does not time (nan latency) leaves both unreported
    untimed = PolicyScore(0.9, 1.0, 10.0, 8.0, 1.0, 0.1, 5.0, float("nan"), False, 0, 0, 0, 0)
    assert (PolicyRecord.from_score(untimed).latency_ms, untimed.latency_spread_ms) == (-1.0, -1.0)
