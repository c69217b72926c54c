"""Screening proposals with the search's accuracy predictor (``agent.screen`` = k > 1).

The env's ``evaluate`` is wrapped: each proposal's accuracy is predicted by a ridge regression
on the search's scored records (refitted as records arrive) and the proposal is scored only when
its prediction is in the top 1/k of the recent proposals'; the others come back marked
``screened`` with the discard flag, so DDPG neither learns from them nor counts them as
episodes and the proposal methods propose again. Until ``MIN_RECORDS`` records exist every
proposal is scored.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ajpq.agent.algorithm import DISCARD_INFO_KEY
from ajpq.core.policy import CompressionPolicy
from ajpq.search.env import Evaluate
from ajpq.search.predictor import AccuracyPredictor, policy_features
from ajpq.search.record import PolicyRecord

__all__ = ["MIN_RECORDS", "ScoredRows", "ScreeningClient", "is_screened", "scored_rows"]

logger = logging.getLogger(__name__)

MIN_RECORDS = 8  # scored records before the predictor screens anything
SCREENED_KEY = "screened"

ScoredRows = Callable[[set[str]], list[tuple[str, str, float]]]
"""Given the policy keys already known, the other scored records as (key, policy JSON,
accuracy); failed evaluations left out."""


def is_screened(record: Mapping[str, Any]) -> bool:
    return bool(record.get(SCREENED_KEY))


def scored_rows(
    sources: list[tuple[Mapping[str, PolicyRecord], Callable[[str], str | None]]],
    known: set[str],
) -> list[tuple[str, str, float]]:
    """The predictor's rows from (records by key, policy JSON by key) sources, first source
    first: (key, policy JSON, accuracy) of each scored record not in ``known``; failed ones
    left out. A search's own records and a shared sweep's earlier ones are both valid: a
    policy's accuracy does not depend on the budget it was proposed under."""
    seen = set(known)
    rows = []
    for records, policy_json in sources:
        for key, record in records.items():
            if key in seen or record.failed or record.infra_failed:
                continue
            text = policy_json(key)
            if text is not None:
                rows.append((key, text, record.accuracy))
                seen.add(key)
    return rows


class ScreeningClient:
    """``evaluate`` that scores one proposal in ``screen`` (the predicted best ones)."""

    def __init__(
        self,
        evaluate: Evaluate,
        scored_rows: ScoredRows,
        screen: int,
        on_screened: Callable[[], None] | None = None,
    ) -> None:
        self.evaluate = evaluate
        self.on_screened = on_screened
        self.scored_rows = scored_rows
        self.screen = screen
        self.features: dict[str, np.ndarray] = {}
        self.targets: dict[str, float] = {}
        self.predictor: AccuracyPredictor | None = None
        self.recent: collections.deque[float] = collections.deque(maxlen=max(16, 4 * screen))
        self.passed_over = 0  # proposals screened out since the last one scored

    def _refresh(self) -> None:
        rows = self.scored_rows(set(self.targets))
        for key, policy_json, accuracy in rows:
            self.features[key] = policy_features(CompressionPolicy.from_json(policy_json))
            self.targets[key] = accuracy
        if rows and len(self.targets) >= MIN_RECORDS:
            keys = sorted(self.targets)
            features = np.stack([self.features[k] for k in keys])
            self.predictor = AccuracyPredictor.fit(
                features, np.array([self.targets[k] for k in keys])
            )
            if not self.recent:
                # the scored records stand for the proposals seen so far, so the threshold
                # means "top 1/k" from the first prediction on (an empty window would pass
                # the first few proposals whatever their prediction)
                self.recent.extend(self.predictor.predict(features).tolist())

    def __call__(self, policy: CompressionPolicy) -> Mapping[str, Any]:
        if self.screen <= 1:
            return self.evaluate(policy)
        self._refresh()
        if self.predictor is None:
            return self.evaluate(policy)
        predicted = float(self.predictor.predict(policy_features(policy))[0])
        self.recent.append(predicted)
        threshold = float(np.quantile(np.asarray(self.recent), 1.0 - 1.0 / self.screen))
        # never pass over more than 2k in a row: a predictor that rates everything low
        # cannot stop the search
        if predicted >= threshold or self.passed_over >= 2 * self.screen:
            self.passed_over = 0
            return {**self.evaluate(policy), "predicted_accuracy": predicted}
        self.passed_over += 1
        if self.on_screened is not None:
            self.on_screened()
        return {
            "reward": 0.0,
            DISCARD_INFO_KEY: True,
            SCREENED_KEY: True,
            "predicted_accuracy": predicted,
        }
