"""Comparing in the MLflow UI works on first sight, in a real browser (Debian's chromium driven by
Playwright): the link a search prints opens on the runs table, the search's policy runs are
listed under it, and the compare page of three policy runs shows the per-layer metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ajpq.run.driver import run_search
from ajpq.run.rundir import run_base_name
from ajpq.run.tracking import LOCAL_UI
from ajpq.search.config import load_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run does)"
    ),
]


def test_the_ui_opens_on_runs_lists_policies_under_their_search_and_compares_them(
    ray_session, search_config_file, mlflow_ui, tmp_path
):
    from playwright.sync_api import sync_playwright

    path = search_config_file(
        agent={"episodes": 6, "warmup_episodes": 3, "env_runners": 1},
        evaluator={
            "num_evaluators": 1,
            "scorer": "ajpq.task.scoring:sleep_scorer",
            "scorer_args": {"min_s": 0.01, "max_s": 0.02},
        },
    )
    config = load_config(path)
    outcome = run_search(config)
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "tags.ajpq.role = 'policy'" in experiment.tags["mlflow.note.content"]
    policies = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
        order_by=["metrics.episode ASC"],
    )
    assert len(policies) == 6
    assert not any(run.data.params for run in policies)  # no string per-layer params to plot
    search_name = run_base_name(config)
    # the search run's trade-off plot (the sleep scorer measures no latency: no latency plot)
    # and its table of every policy's metrics and layer choices
    plots = {a.path for a in client.list_artifacts(outcome.parent_run_id, "plots")}
    assert "plots/accuracy_vs_bitops.png" in plots
    table_file = client.download_artifacts(outcome.parent_run_id, "policies.json", str(tmp_path))
    table = json.loads(Path(table_file).read_text())
    assert len(table["data"]) == 6 and "accuracy" in table["columns"]
    assert any(column.endswith("/wbits") for column in table["columns"])

    ui = mlflow_ui(config.tracking.uri)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # 1. the link the search printed opens on the runs table, not the GenAI overview
        page.goto(outcome.ui_link.replace(LOCAL_UI, ui.uri))
        page.get_by_text(search_name).first.wait_for(timeout=60_000)
        assert "/runs" in page.url and "/overview" not in page.url, page.url
        page.screenshot(path=str(tmp_path / "runs.png"))
        # 2. expanding the search lists its policy runs under it
        row = page.locator("[role=row]", has_text=search_name).first
        row.locator("button").first.click()
        page.get_by_text("episode-0001").first.wait_for(timeout=30_000)
        shown = page.inner_text("body")
        assert all(f"episode-{n:04d}" in shown for n in range(1, 7))
        page.screenshot(path=str(tmp_path / "policies.png"))
        # 3. the compare page of three policy runs renders the numeric per-layer metrics
        ids = json.dumps([run.info.run_id for run in policies[:3]])
        experiments = json.dumps([experiment.experiment_id])
        page.goto(f"{ui.uri}/#/compare-runs?runs={ids}&experiments={experiments}")
        page.get_by_text("Comparing 3 Runs").first.wait_for(timeout=60_000)
        page.get_by_text("layers/00.").first.wait_for(timeout=30_000)
        compare = page.inner_text("body")
        first = policies[0].data.metrics
        layer_keys = sorted(k for k in first if k.startswith("layers/"))
        assert layer_keys and all(key in compare for key in layer_keys[:6])
        assert "bitops_ratio" in compare and "latency_ms" in compare
        assert "queued_ts" not in compare.split("Tags")[0]  # timestamps are tags now
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        browser.close()
