"""Every plot is drawn headless into a PNG, or skipped when there is nothing to plot."""

from ajpq.run.plots import plot_fronts, plot_search


def test_a_search_plot_and_a_sweep_plot(tmp_path):
    records = [
        {"episode": i, "accuracy": 0.5 + i / 20, "compression_ratio": 8 + i, "failed": i == 3}
        for i in range(1, 6)
    ]
    path = plot_search(records, tmp_path / "search.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_search([{"failed": True}], tmp_path / "none.png") is None
    points = [
        {
            "accuracy": 0.9 - i / 50,
            "compression_ratio": 4.0 * (i + 1),
            "bitops_ratio": 0.2 / (i + 1),
        }
        for i in range(5)
    ]
    fronts = plot_fronts(points, points, points, points[:1], tmp_path / "pareto.png")
    assert fronts is not None and fronts.stat().st_size > 1000
    assert plot_fronts([], [], [], [], tmp_path / "empty.png") is None
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "empty.png").exists()
