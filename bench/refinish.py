"""Finish finished searches again with the end-of-search rule of this version: their top
``scoring.fidelity.top_k`` policies that may be the best (``ajpq.search.reward.admitted``) re-scored
with the long recipe, the best by that score written as the run's ``best_policy.json``.

For searches that ended under an older rule (before 2026-12-07 evening the re-scoring chose among
every scored policy, so a stepwise search's best could be a pruning-stage policy above the
budget). Long scores the search already computed (``fidelity.json``) are reused. Where the best
changes, the run's ``fidelity.json`` is rewritten and its table final (``final.json``) is removed,
so ``bench/joint_vs_baselines.py --sweep-dir`` finetunes the new best.

Usage: ``python bench/refinish.py RUN_OR_SWEEP_DIR ...`` (a sweep folder: every run below it).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from equal_wall import finish

from ajpq.run.journal import Journal
from ajpq.run.rundir import RunDir
from ajpq.search.context import SearchContext
from ajpq.search.record import PolicyRecord

logger = logging.getLogger("refinish")


def refinish(folder: RunDir) -> bool:
    """Choose the run's best again; True when it changed."""
    context = SearchContext.load(folder.context)
    records = [PolicyRecord.from_dict(r) for r in json.loads(folder.records.read_text())]
    finished = finish(folder, context, records)
    if finished is None:
        logger.warning("%s: no scored policy meets the budget", folder.path)
        return False
    best, chosen, long = finished
    journal = Journal(folder.journal)
    try:
        text = journal.policy_json(best.policy_key) or ""
    finally:
        journal.close()
    if folder.best_policy.exists() and folder.best_policy.read_text() == text:
        return False
    folder.best_policy.write_text(text)
    rows = [
        {
            "policy_key": r.policy_key,
            "episode": r.episode,
            "accuracy": r.accuracy,
            "long_accuracy": long[r.policy_key],
        }
        for r in chosen
    ]
    kept = json.loads(folder.fidelity.read_text()) if folder.fidelity.exists() else {}
    kept.update({"rows": rows, "best_policy_key": best.policy_key, "refinished": True})
    folder.fidelity.write_text(json.dumps(kept, indent=1))
    (folder.path / "final.json").unlink(missing_ok=True)
    logger.info("%s: best is now %s (%.2fx)", folder.path, best.policy_key, best.compression_ratio)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    runs = sorted({p.parent for d in args.dirs for p in Path(d).rglob("records.json")})
    changed = sum(refinish(RunDir(run)) for run in runs)
    print(f"{changed} of {len(runs)} searches have a new best")


if __name__ == "__main__":
    main()
