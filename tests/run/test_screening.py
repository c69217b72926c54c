"""The predictor's screen in front of the pool (no Ray: a stand-in pool)."""

import numpy as np

from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.run.screening import MIN_RECORDS, ScreeningClient, is_screened


def _policy(kept: int, bits: int) -> CompressionPolicy:
    return CompressionPolicy(
        "m", (1, 1, 4, 4), "sig", (LayerPolicy("a", (bits,) * kept + (0,) * (8 - kept), 8),)
    )


class _Pool:
    """Scores a policy by its kept channels x bits (the truth the predictor must find)."""

    def __init__(self):
        self.scored = []

    def truth(self, policy):
        bits = np.asarray(policy.layers[0].weight_bits)
        return float((bits > 0).mean() + bits.max() / 8)

    def __call__(self, policy):
        self.scored.append(policy)
        return {"reward": self.truth(policy)}

    def rows(self, known):
        return [
            (p.to_json(), p.to_json(), self.truth(p))
            for p in self.scored
            if p.to_json() not in known
        ]


def test_every_proposal_is_scored_until_there_are_records_then_one_in_k():
    pool = _Pool()
    client = ScreeningClient(pool, pool.rows, screen=3)
    rng = np.random.default_rng(0)
    proposals = [_policy(int(rng.integers(1, 9)), int(rng.integers(1, 9))) for _ in range(200)]
    answers = [client(p) for p in proposals]
    assert all(not is_screened(a) for a in answers[:MIN_RECORDS])
    screened = [is_screened(a) for a in answers[MIN_RECORDS:]]
    assert 0.5 < np.mean(screened) < 0.8  # about 2 in 3 passed over
    later = [(a["predicted_accuracy"], is_screened(a)) for a in answers[MIN_RECORDS:]]
    kept = np.mean([p for p, s in later if not s])
    dropped = np.mean([p for p, s in later if s])
    assert kept > dropped
    truth_scored = np.mean([pool.truth(p) for p in pool.scored[MIN_RECORDS:]])
    truth_all = np.mean([pool.truth(p) for p in proposals[MIN_RECORDS:]])
    assert truth_scored > truth_all  # the evaluations went to the better proposals
    assert all(a["infra_failed"] for a in answers if is_screened(a))  # the agent drops them


def test_screen_of_one_scores_everything():
    pool = _Pool()
    client = ScreeningClient(pool, pool.rows, screen=1)
    for kept in range(1, 9):
        for bits in (2, 8):
            client(_policy(kept, bits))
    assert len(pool.scored) == 16


def test_the_screen_bites_from_its_first_prediction():
    """The threshold starts from the scored records' predictions: a poor proposal right after
    the predictor is fitted is passed over (an empty window would let it through)."""
    pool = _Pool()
    client = ScreeningClient(pool, pool.rows, screen=3)
    for kept, bits in [(8, 8), (7, 6), (6, 8), (8, 4), (5, 7), (7, 8), (6, 5), (8, 6)]:
        assert not is_screened(client(_policy(kept, bits)))
    assert is_screened(client(_policy(1, 1)))


def test_the_rows_come_from_every_source_once_without_failures():
    from ajpq.run.screening import scored_rows
    from ajpq.search.record import PolicyRecord

    own = {"a": PolicyRecord(accuracy=0.9), "b": PolicyRecord(accuracy=0.1, failed=True)}
    shared = {"a": PolicyRecord(accuracy=0.5), "c": PolicyRecord(accuracy=0.7)}
    rows = scored_rows([(own, lambda k: f"json-{k}"), (shared, lambda k: f"json-{k}")], {"x"})
    assert rows == [("a", "json-a", 0.9), ("c", "json-c", 0.7)]  # the search's own first
    assert scored_rows([(shared, lambda k: None)], set()) == []  # no policy JSON, no row
    assert scored_rows([(shared, str)], {"a", "c"}) == []
