"""Every plot ajpq draws (matplotlib, headless): a search's curve and scatter, a sweep's
Pareto fronts. Each returns the PNG's path, or None when there is nothing to plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ajpq.search.pareto import pareto_front

__all__ = ["TRADEOFFS", "plot_fronts", "plot_search", "plot_tradeoff", "plot_tradeoffs"]


def _pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (imported on first plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_search(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation accuracy per episode (and best so far), and accuracy vs compression ratio."""
    ok = [r for r in records if not r.get("failed")]
    if not ok:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    episodes = [r["episode"] for r in ok]
    best, running = [], -float("inf")
    for r in ok:
        running = max(running, r["accuracy"])
        best.append(running)
    left.plot(episodes, [r["accuracy"] for r in ok], ".", label="policy")
    left.plot(episodes, best, "-", label="best so far")
    left.set_xlabel("episode")
    left.set_ylabel("validation accuracy")
    left.legend()
    right.scatter(
        [r["compression_ratio"] for r in ok],
        [r["accuracy"] for r in ok],
        c=episodes,
        cmap="viridis",
    )
    right.set_xlabel("compression ratio (fp32 size / size)")
    right.set_ylabel("validation accuracy")
    return _save(fig, plt, path)


def _front_axis(
    axis: Any, points: list[dict[str, Any]], front: list[dict[str, Any]], x: str, label: str
) -> None:
    """Accuracy against ``x`` on a log axis: every policy in grey, the Pareto front in red."""
    axis.scatter(
        [p[x] for p in points], [p["accuracy"] for p in points], s=8, c="0.6", label="policy"
    )
    ordered = sorted(front, key=lambda p: p[x])
    axis.plot(
        [p[x] for p in ordered], [p["accuracy"] for p in ordered], "o-", c="C3", label="Pareto"
    )
    axis.set_xscale("log")
    axis.set_xlabel(label)
    axis.set_ylabel("validation accuracy")


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_fronts(
    points: list[dict[str, Any]],
    by_ratio: list[dict[str, Any]],
    by_bitops: list[dict[str, Any]],
    bests: list[dict[str, Any]],
    path: Path,
) -> Path | None:
    """A sweep's policies, its Pareto fronts (accuracy vs ratio, vs BitOps) and trial bests."""
    if not points:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, x, front, label in (
        (left, "compression_ratio", by_ratio, "compression ratio (fp32 size / size)"),
        (right, "bitops_ratio", by_bitops, "BitOps (share of fp32)"),
    ):
        _front_axis(axis, points, front, x, label)
        axis.scatter(
            [p[x] for p in bests],
            [p["accuracy"] for p in bests],
            marker="*",
            s=120,
            c="C0",
            label="best of a trial",
        )
    left.legend()
    return _save(fig, plt, path)


# (metric on the x axis, its label, the file name under plots/): what separates policies of
# one budget (a size budget is filled, so the compression ratio barely varies within a search)
TRADEOFFS = (
    ("bitops_ratio", "BitOps (share of fp32)", "accuracy_vs_bitops.png"),
    ("latency_ms", "latency (ms, measured on the evaluator)", "accuracy_vs_latency.png"),
)


def plot_tradeoff(points: list[dict[str, Any]], x: str, label: str, path: Path) -> Path | None:
    """Validation accuracy against ``x`` for every scored policy, its Pareto front (more
    accuracy, less ``x``) marked in red."""
    ok = [p for p in points if not p.get("failed") and (p.get(x) or 0) > 0]
    if not ok:
        return None
    front = pareto_front(ok, lambda p: (p["accuracy"], -p[x]))
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6, 4.2))
    _front_axis(axis, ok, front, x, label)
    axis.legend()
    return _save(fig, plt, path)


def plot_tradeoffs(points: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Every plot of :data:`TRADEOFFS` into ``folder`` (those with something to plot)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = [plot_tradeoff(points, x, label, folder / name) for x, label, name in TRADEOFFS]
    return [path for path in made if path is not None]
