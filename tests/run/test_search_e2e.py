"""End-to-end searches on digits (local Ray, SQLite MLflow)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from ajpq.core.analysis import analyze
from ajpq.core.budget import Budget, budget_value
from ajpq.core.builder import LayerKnobs, build_policy
from ajpq.core.cost import CostModel
from ajpq.core.policy import CompressionPolicy
from ajpq.run.driver import run_search
from ajpq.run.export_run import export_best, latest_run_dir
from ajpq.run.tracking import POLICY_METRICS
from ajpq.search.config import load_config
from ajpq.search.context import SearchContext
from ajpq.task.scoring import LatencyRuntime, ScoreSettings

pytestmark = pytest.mark.ray


def _children(uri: str, parent_id: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=1000,
    )
    return client, runs


def test_search_records_every_policy_in_budget_and_in_parallel(ray_session, search_config_file):
    config = load_config(
        search_config_file(),
        ["tracking.register_model=digits-small", "tracking.model_onnx=integer"],
    )
    outcome = run_search(config)
    assert not outcome.interrupted
    client, children = _children(config.tracking.uri, outcome.parent_run_id)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["ajpq.role"] == "search" and parent.data.params["model"] == "digits_cnn"
    assert parent.info.status == "FINISHED"
    # one child per distinct evaluated policy
    keys = [run.data.tags["ajpq.policy_key"] for run in children]
    assert len(keys) == len(set(keys)) == outcome.stats["scored"] == outcome.episodes
    assert outcome.episodes + outcome.stats["cache_hits"] >= config.agent.episodes
    context = SearchContext.load(outcome.run_dir / "context")
    costs = CostModel(context.graph)
    budget = Budget("size", config.budget.value)
    for run in children:
        assert run.data.tags["ajpq.role"] == "policy"
        assert set(POLICY_METRICS) <= set(run.data.metrics), set(POLICY_METRICS) - set(
            run.data.metrics
        )
        path = client.download_artifacts(run.info.run_id, "policy.json")
        policy = CompressionPolicy.load(path)
        assert budget_value(policy, budget, costs) <= config.budget.value + 1e-9
        assert run.data.metrics["compression_ratio"] >= 1 / config.budget.value - 1e-6
    # the parent's best equals the best child
    # among equal rewards the pool keeps the first one found
    best_child = max(children, key=lambda r: (r.data.metrics["reward"], -r.data.metrics["episode"]))
    assert parent.data.metrics["best_reward"] == pytest.approx(best_child.data.metrics["reward"])
    assert parent.data.metrics["best_accuracy"] == pytest.approx(
        best_child.data.metrics["accuracy"]
    )
    # the learning curve: mean val acc per quarter of the episodes, on the parent run too
    scored = [r for r in children if r.data.tags.get("ajpq.status") != "failed"]
    by_episode = sorted(scored, key=lambda r: r.data.metrics["episode"])
    quarter = len(by_episode) // 4
    if len(by_episode) % 4 == 0:
        first = [r.data.metrics["accuracy"] for r in by_episode[:quarter]]
        assert outcome.curve[0] == pytest.approx(sum(first) / quarter)
    assert len(outcome.curve) == 4
    for i, value in enumerate(outcome.curve, start=1):
        assert parent.data.metrics[f"val_acc_quarter_{i}"] == pytest.approx(value)
    history = client.get_metric_history(outcome.parent_run_id, "best_reward")
    assert [m.step for m in history] == sorted(m.step for m in history)
    assert (
        CompressionPolicy.load(outcome.best_policy_path).to_json()
        == CompressionPolicy.load(
            client.download_artifacts(best_child.info.run_id, "policy.json")
        ).to_json()
    )
    # 2 env runners x 2 evaluators: some evaluation intervals overlap in time
    spans = sorted(
        (float(r.data.tags["ajpq.eval_start_ts"]), float(r.data.tags["ajpq.eval_end_ts"]))
        for r in children
    )
    overlaps = sum(1 for (s1, e1), (s2, e2) in zip(spans, spans[1:]) if s2 < e1)
    assert overlaps >= 1, spans

    # the best policy's compressed file: in the run folder, as the search run's artifact, and
    # registered as a model version tagged with what it was searched for and what it measures
    model = outcome.best_model
    assert outcome.best_model_path.stat().st_size == model["file_bytes"] > 0
    assert model["file_bytes"] < 0.25 * model["fp32_file_bytes"]
    assert model["finetune_steps"] == config.scoring.finetune.steps
    logged = {a.path for a in client.list_artifacts(outcome.parent_run_id, "model")}
    assert logged == {
        "model/best_compressed.pt",
        "model/best_compressed.json",
        "model/best_compressed.onnx",
    }
    # its integer ONNX: in the run folder, run by onnxruntime's integer kernels, timed against
    # the fp32 network's ONNX, classifying the test split as the compressed file does
    onnx_file = Path(model["onnx_path"])
    assert onnx_file == outcome.run_dir / "best_compressed.onnx"
    assert onnx_file.stat().st_size == model["onnx_bytes"] > 0
    assert model["onnx_form"] == "integer" and model["onnx_integer_ops"]
    assert model["onnx_latency_ms"] > 0 and model["fp32_onnx_latency_ms"] > 0
    assert model["onnx_speedup"] == pytest.approx(
        model["fp32_onnx_latency_ms"] / model["onnx_latency_ms"]
    )
    assert abs(model["onnx_test_accuracy"] - model["test_accuracy"]) <= 0.02
    copy = client.download_artifacts(outcome.parent_run_id, "model/best_compressed.pt")
    assert Path(copy).read_bytes() == outcome.best_model_path.read_bytes()
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["best_model_file_bytes"] == model["file_bytes"]
    assert parent.data.metrics["best_model_onnx_speedup"] == pytest.approx(model["onnx_speedup"])
    assert outcome.registered == "digits-small/1"
    assert parent.data.tags["ajpq.registered_model"] == "digits-small/1"
    (version,) = client.search_model_versions("name='digits-small'")
    assert version.run_id == outcome.parent_run_id and version.source.endswith("/model")
    assert version.tags["test_accuracy"] == f"{model['test_accuracy']:.4f}"
    assert version.tags["budget"] == f"size {config.budget.value}"
    assert version.tags["ajpq.source"] == "search"

    # the best policy, finetuned longer, exported as a file that is itself scored
    result = export_best(latest_run_dir(config), finetune_steps=20, onnx="integer")
    assert Path(result["path"]) == outcome.run_dir / "compressed.pt"
    assert result["file_bytes"] == Path(result["path"]).stat().st_size
    assert result["file_bytes"] < 0.25 * result["fp32_file_bytes"]  # budget: 10% of fp32 size
    test_samples = len(context.load_data().test)
    assert abs(result["test_accuracy"] - result["simulated_test_accuracy"]) <= 1 / test_samples
    assert result["test_accuracy"] > 0.5
    # the integer ONNX file, run by onnxruntime's integer kernels, classifies the test split as
    # the loaded model does (its biases rounded to the accumulators' grid: within a point)
    assert Path(result["onnx_path"]).exists() and result["onnx_bytes"] > 0
    assert sum(result["onnx_integer_ops"].values()) >= 1
    assert result["onnx_latency_ms"] > 0 and result["fp32_onnx_latency_ms"] > 0
    assert abs(result["onnx_test_accuracy"] - result["test_accuracy"]) <= 0.01
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["export_test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert parent.data.metrics["export_onnx_speedup"] == pytest.approx(result["onnx_speedup"])
    exported = {a.path for a in client.list_artifacts(outcome.parent_run_id, "export")}
    assert exported == {"export/compressed.pt", "export/export.json", "export/compressed.onnx"}
    versions = client.search_model_versions("name='digits-small'")
    assert sorted(v.tags["ajpq.source"] for v in versions) == ["export", "search"]


def test_killed_evaluator_is_replaced_and_nothing_is_lost(ray_session, search_config_file):
    config = load_config(
        search_config_file(
            agent={"episodes": 8, "env_runners": 2}, scoring={"finetune": {"steps": 40}}
        )
    )
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcome", run_search(config)))
    thread.start()
    pool = None
    deadline = time.time() + 240
    while time.time() < deadline and pool is None:
        try:
            pool = ray.get_actor(_pool_name(), namespace=ray.get_runtime_context().namespace)
        except ValueError:
            time.sleep(0.5)
    assert pool is not None
    while time.time() < deadline and ray.get(pool.summary.remote())["episodes"] < 1:
        time.sleep(0.2)
    victim = ray.get(pool.worker_handles.remote())[0]
    ray.kill(victim, no_restart=True)
    thread.join(timeout=600)
    outcome = result["outcome"]
    assert outcome.stats["replaced"] >= 1
    _, children = _children(config.tracking.uri, outcome.parent_run_id)
    keys = {run.data.tags["ajpq.policy_key"] for run in children}
    assert len(children) == len(keys) == outcome.stats["scored"] == outcome.episodes
    assert not any(run.data.tags.get("ajpq.status") == "failed" for run in children)
    assert outcome.episodes + outcome.stats["cache_hits"] >= config.agent.episodes


def _pool_name() -> str:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    live = [n for n in names if n.startswith("ajpq-pool-")]
    if not live:
        raise ValueError("no pool yet")
    return live[-1]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_resume_after_interrupt_scores_nothing_twice(search_config_file, tmp_path, stop):
    """Ctrl-C stops cleanly (checkpoint, KILLED, a hint to resume); SIGKILL of the driver and
    its local Ray is a crash. Either way --resume continues the same MLflow parent run from the
    journal: no policy scored twice, no duplicate child run, no more than N policies."""
    path = search_config_file(
        agent={"episodes": 10, "env_runners": 1},
        evaluator={"num_evaluators": 1},
        scoring={"finetune": {"steps": 20}},
    )
    config = load_config(path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ajpq.cli", "search", "--config", str(path)]
    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    deadline = time.time() + 300
    for line in first.stdout:
        seen.append(line)
        progress = re.search(r"episode (\d+)/10", line)
        if (progress and 3 <= int(progress.group(1)) < 10) or time.time() > deadline:
            break
    os.killpg(first.pid, stop)
    rest, _ = first.communicate(timeout=300)
    seen.append(rest)
    log = "".join(seen)
    assert first.returncode != 0, log
    if stop == signal.SIGINT:
        assert "--resume" in log
    latest = Path(config.output_dir).resolve() / "digits_cnn-digits-size0.1-s0" / "latest.json"
    assert latest.exists()
    second = subprocess.run(
        command + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout
    import json

    parent_id = json.loads(latest.read_text())["parent_run_id"]
    client, children = _children(config.tracking.uri, parent_id)
    keys = [run.data.tags["ajpq.policy_key"] for run in children]
    # no overshoot: at most N distinct policies (fewer when the agent repeats one: a cache hit)
    assert len(keys) == len(set(keys)) <= config.agent.episodes
    assert all(run.info.status in ("FINISHED", "FAILED") for run in children)
    episodes = sorted(int(run.data.metrics["episode"]) for run in children)
    assert episodes == list(range(1, len(episodes) + 1))
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_latency_budget_search_with_a_user_scorer(ray_session, search_config_file):
    """A latency ceiling: the latency model is fitted by a task with an evaluator's resources
    (on the evaluators' kind of device) and kept in the run's context; a scorer named in the
    config (here the orchestration-only sleep scorer) scores every policy and the final report."""
    config = load_config(
        search_config_file(
            budget={"kind": "latency", "value": 1000.0},
            agent={"episodes": 4, "warmup_episodes": 4, "env_runners": 2},
            evaluator={
                "scorer": "ajpq.task.scoring:sleep_scorer",
                "scorer_args": {"min_s": 0.05, "max_s": 0.1},
            },
        )
    )
    outcome = run_search(config)
    context = SearchContext.load(outcome.run_dir / "context")
    assert context.latency_model is not None and context.latency_device == "cpu"
    assert outcome.episodes == config.agent.episodes  # asynchronous sampling starts no extra
    client, children = _children(config.tracking.uri, outcome.parent_run_id)
    assert len(children) == outcome.episodes
    assert all(run.data.tags["ajpq.latency_device"] == "cpu" for run in children)
    # the sleep scorer's stand-in accuracy is BitOps ratio ** 0.25, also on the test split
    best = outcome.best
    assert best.accuracy == pytest.approx(best.bitops_ratio**0.25)
    assert outcome.best_test_accuracy == pytest.approx(best.accuracy)


def test_latency_budget_in_onnxruntime_is_met_as_measured(ray_session, search_config_file):
    """``scoring.latency_runtime: onnxruntime``: the latency line is fitted on integer ONNX in
    onnxruntime, every policy is timed there (its runtime in the latency tag), and the best
    policy's measured latency meets the ceiling."""
    import torch

    from ajpq.core.analysis import analyze
    from ajpq.core.builder import LayerKnobs, build_policy
    from ajpq.export.runtime import deployed_latency
    from ajpq.task.models import build_model

    model = build_model("digits_cnn", 10, 1).eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    full = build_policy(model, graph, LayerKnobs(0.0, 8, 8), model_name="digits_cnn")
    # A loose ceiling: this network's floor (1-bit, one channel a group) runs at ~0.9x of its
    # full 8-bit form, and on a loaded 2-core CI machine the evaluator's timings run up to ~2x
    # of the driver's, so a tight one fails the preflight (the wall binding on a latency table
    # is tested in tests/core/test_budget.py). What this test checks is the runtime's plumbing
    # and that the best policy is judged by its measured latency.
    ceiling = 2.5 * deployed_latency(model, full, graph).median_ms
    config = load_config(
        search_config_file(
            budget={"kind": "latency", "value": ceiling},
            agent={"episodes": 6, "warmup_episodes": 6, "env_runners": 2},
            evaluator={
                "scorer": "ajpq.task.scoring:sleep_scorer",
                "scorer_args": {"min_s": 0.05, "max_s": 0.1},
            },
            scoring={"latency_runtime": "onnxruntime", "latency_repeats": 10},
        )
    )
    outcome = run_search(config)
    context = SearchContext.load(outcome.run_dir / "context")
    assert context.latency_model is not None
    client, children = _children(config.tracking.uri, outcome.parent_run_id)
    assert all("onnxruntime" in run.data.tags["ajpq.latency_device"] for run in children)
    assert all(run.data.metrics["latency_ms"] > 0 for run in children)
    assert all(run.data.metrics["latency_spread_ms"] >= 0 for run in children)
    assert outcome.best is not None and 0 < outcome.best.latency_ms <= ceiling
    # a latency search keeps whole blocks of 16 channels (ajpq.core.snap), so the fast
    # kernels run: every coupling group of the best policy keeps 16k channels, or fewer than 16
    best = CompressionPolicy.load(outcome.best_policy_path)
    for group in context.graph.groups:
        kept = sum(b > 0 for b in best.layers[group.members[0]].weight_bits)
        assert kept % 16 == 0 or kept < 16, (group.index, kept)
    # the table's prediction against what was measured, reported on the parent run; loose: a
    # table fitted while CI's cores are busy and policies timed when they are not differ ~2x
    # (a unit slip, ms against s, would be 1000x); its size is measured in results/deploy.md
    assert outcome.latency_table_error is not None and outcome.latency_table_error < 3.0
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["latency_table_error"] == pytest.approx(outcome.latency_table_error)


def test_the_deployed_speed_is_timed_where_the_form_runs(tmp_path, digits_model):
    """The integer form is timed in onnxruntime on the CPU against the fp32 ONNX; the TensorRT
    form only in TensorRT (onnxruntime's CPU kernels run its int8 activations several times
    slower, which says nothing of TensorRT): on a CPU it is not timed."""
    from types import SimpleNamespace

    from ajpq.export.runtime import integer_file
    from ajpq.run.export_run import ONNX_INTEGER, ONNX_TENSORRT, _deployed_speed

    model = digits_model.model.eval()
    graph = analyze(model, torch.zeros(1, 1, 16, 16))
    policy = build_policy(model, graph, LayerKnobs(0.25, 6, 8), model_name="digits_cnn")
    context = SimpleNamespace(
        model=model, graph=graph, config=SimpleNamespace(scoring=ScoreSettings())
    )
    integer = integer_file(model, policy, graph, tmp_path / "i.onnx")
    speed = _deployed_speed(integer, context, tmp_path, ONNX_INTEGER, "cpu")
    assert speed["onnx_latency_provider"] == "CPUExecutionProvider"
    assert speed["onnx_speedup"] == pytest.approx(
        speed["fp32_onnx_latency_ms"] / speed["onnx_latency_ms"]
    )
    symmetric = integer_file(model, policy, graph, tmp_path / "t.onnx", LatencyRuntime.TENSORRT)
    assert _deployed_speed(symmetric, context, tmp_path, ONNX_TENSORRT, "cpu") == {}
