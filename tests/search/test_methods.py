"""Proposal methods (random, TPE) in the search floor: seeded, one action row per group, ask /
tell; the methods that do not propose are refused."""

import numpy as np
import pytest

from ajpq.search.config import Method
from ajpq.search.methods import make_proposer


def test_random_proposals_are_seeded_and_in_range():
    first = make_proposer(Method.RANDOM, groups=5, seed=3, startup=0).ask()[1]
    again = make_proposer(Method.RANDOM, groups=5, seed=3, startup=0).ask()[1]
    assert first.shape == (5, 4) and np.array_equal(first, again)
    assert ((first >= 0) & (first <= 1)).all()


def test_tpe_asks_and_learns_from_tells():
    proposer = make_proposer(Method.TPE, groups=2, seed=0, startup=3)
    for _ in range(12):
        token, actions = proposer.ask()
        assert actions.shape == (2, 4)
        proposer.tell(token, -float(np.abs(actions - 0.8).sum()))  # best at 0.8 everywhere
    best = proposer.study.best_trial
    assert len(proposer.study.trials) == 12 and best.value > -4.0


@pytest.mark.parametrize("method", [Method.DDPG, Method.UNIFORM, Method.STEPWISE])
def test_methods_that_do_not_propose_are_refused(method):
    with pytest.raises(ValueError, match="does not propose actions"):
        make_proposer(method, groups=2, seed=0, startup=0)
