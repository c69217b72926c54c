"""The issue-24 table at equal wall time: every search of the slower method stopped where the
faster method's search of the same budget and seed ended.

Reads a table written by ``bench/joint_vs_baselines.py`` (its ``.csv``: one row per search, with
the search's wall and run folder). For each budget and seed it pairs ``--slow`` (default the
table's DDPG) with ``--fast`` (default ``tpe``), keeps the slow search's evaluations that had
returned within the fast search's wall (measured the same way: first policy queued to last
returned), and finishes that truncated search exactly as the search finishes: its top
``scoring.fidelity.top_k`` by the search's score re-scored with the long recipe, the best by that
score given the table's identical final finetune (``--final-steps``) and scored as the exported
file on the test split. Long scores and finals already computed for the same policy in the run
folder (``fidelity.json``, ``final.json``) are reused, not recomputed.

Usage: ``python bench/equal_wall.py [--table results/fmnist.csv] [--slow LABEL] [--fast LABEL]
[--out results/fmnist_equal_wall]`` (writes ``<out>.md`` and ``<out>.csv``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

from ajpq.core.policy import CompressionPolicy
from ajpq.run.export_run import package
from ajpq.run.fidelity import best_by_long_score, choose_policies, long_settings, rescore_on
from ajpq.run.journal import Journal
from ajpq.run.rundir import RunDir
from ajpq.search.context import SearchContext, ShippedData
from ajpq.search.record import PolicyRecord

logger = logging.getLogger("equal_wall")


def _truncated(folder: RunDir, wall_s: float) -> list[PolicyRecord]:
    """The search's records that had returned within ``wall_s`` of its first queued policy."""
    records = [PolicyRecord.from_dict(r) for r in json.loads(folder.records.read_text())]
    start = min(r.queued_ts for r in records if r.queued_ts)
    return [r for r in records if r.returned_ts and r.returned_ts - start <= wall_s]


def _long_scores(folder: RunDir, context: SearchContext, keys: list[str]) -> dict[str, float]:
    """Long scores of ``keys``: from the search's own ``fidelity.json`` where it re-scored the
    same policy, else computed here with the same recipe."""
    known = {}
    if folder.fidelity.exists():
        rows = json.loads(folder.fidelity.read_text())["rows"]
        known = {row["policy_key"]: row["long_accuracy"] for row in rows}
    missing = [k for k in keys if k not in known]
    if missing:
        journal = Journal(folder.journal)
        try:
            texts = [journal.policy_json(k) or "" for k in missing]
        finally:
            journal.close()
        data = ShippedData(context.load_data())
        settings = long_settings(context.config.scoring)
        known.update(zip(missing, rescore_on("cpu", context, data, texts, settings)))
    return {k: known[k] for k in keys}


def _final(folder: RunDir, context: SearchContext, key: str, steps: int) -> float:
    """Test accuracy of the exported file after the table's final finetune of policy ``key``:
    the table's own ``final.json`` when it finetuned that policy, else computed here."""
    best = CompressionPolicy.load(folder.best_policy)
    kept = folder.path / "final.json"
    journal = Journal(folder.journal)
    try:
        text = journal.policy_json(key) or ""
    finally:
        journal.close()
    policy = CompressionPolicy.from_json(text)
    if kept.exists() and policy == best:
        final = json.loads(kept.read_text())
        if final.get("final_steps") == steps:
            return float(final["test_accuracy"])
    recipe = dataclasses.replace(context.config.scoring.finetune, steps=steps)
    splits = context.load_data()
    return float(package("cpu", context, splits, policy, recipe)["test_accuracy"])


def finish(
    folder: RunDir, context: SearchContext, records: list[PolicyRecord]
) -> tuple[PolicyRecord, list[PolicyRecord], dict[str, float]] | None:
    """``records`` of a search finished as the search finishes: the best by long score among
    its top ``scoring.fidelity.top_k`` that may be the best (among equals the smallest
    network), the chosen records and their long scores; None when none meets the budget."""
    fidelity = context.config.scoring.fidelity
    chosen = choose_policies(records, fidelity.top_k, 0, fidelity.seed, context.config.budget)
    if not chosen:
        return None
    long = _long_scores(folder, context, [r.policy_key for r in chosen])
    best = best_by_long_score(chosen, [long[r.policy_key] for r in chosen])
    return best, chosen, long


def equal_wall_row(slow: dict[str, Any], fast: dict[str, Any], steps: int) -> dict[str, Any]:
    """The slow search stopped at the fast one's wall, finished as the search finishes."""
    folder = RunDir(Path(slow["run_dir"]))
    context = SearchContext.load(folder.context)
    wall = float(fast["search_wall_s"])
    kept = _truncated(folder, wall)
    finished = finish(folder, context, kept)
    if finished is None:
        raise ValueError(f"{folder.path}: no policy within the budget by {wall:.0f} s")
    best = finished[0]
    return {
        "budget_kind": slow["budget_kind"],
        "budget": float(slow["budget"]),
        "seed": int(slow["seed"]),
        "wall_s": wall,
        "slow_wall_s": float(slow["search_wall_s"]),
        "evaluations": len(kept),
        "slow_test_accuracy": _final(folder, context, best.policy_key, steps),
        "slow_full_test_accuracy": float(slow["test_accuracy"]),
        "fast_test_accuracy": float(fast["test_accuracy"]),
        "same_policy_as_full": best.policy_key == _best_key(folder),
    }


def _best_key(folder: RunDir) -> str | None:
    if not folder.fidelity.exists():
        return None
    return json.loads(folder.fidelity.read_text()).get("best_policy_key")


def _markdown(rows: list[dict[str, Any]], slow: str, fast: str, command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"| budget | seeds | {slow} at {fast}'s wall: evaluations (of 48) | {slow} at {fast}'s wall "
        f"| {slow}, all 48 | {fast} | {slow} ahead (equal wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["budget_kind"], row["budget"]), []).append(row)
    for (kind, value), group in groups.items():
        ahead = sum(r["slow_test_accuracy"] > r["fast_test_accuracy"] for r in group)
        lines.append(
            f"| {kind} {value:g} | {len(group)} "
            f"| {statistics.mean(r['evaluations'] for r in group):.1f} "
            f"| {statistics.mean(r['slow_test_accuracy'] for r in group):.4f} "
            f"| {statistics.mean(r['slow_full_test_accuracy'] for r in group):.4f} "
            f"| {statistics.mean(r['fast_test_accuracy'] for r in group):.4f} "
            f"| {ahead} of {len(group)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default="results/fmnist.csv")
    parser.add_argument("--slow", default="ddpg+uniform-prior+screen4")
    parser.add_argument("--fast", default="tpe")
    parser.add_argument("--final-steps", type=int, default=300)
    parser.add_argument("--out", default="results/fmnist_equal_wall")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    with open(args.table) as handle:
        table = list(csv.DictReader(handle))
    by = {(r["method"], r["budget_kind"], r["budget"], r["seed"]): r for r in table}
    rows = []
    for (method, kind, value, seed), slow in sorted(by.items()):
        fast = by.get((args.fast, kind, value, seed))
        if method != args.slow or fast is None:
            continue
        rows.append(equal_wall_row(slow, fast, args.final_steps))
        logger.info("%s", rows[-1])
    out = Path(args.out)
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python bench/equal_wall.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
    )
    out.with_suffix(".md").write_text(_markdown(rows, args.slow, args.fast, command))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
