"""The CUDA paths, run by ``make gpu-check`` on a GPU machine (skipped elsewhere, saying so):
scoring on the GPU, two evaluators sharing one GPU fenced to half its memory each, latency
timed on the GPU, bf16 autocast close to fp32, and no host sync in the hot loop."""

from __future__ import annotations

import pytest
import ray
import torch
from torch.utils.data import TensorDataset

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import LayerKnobs, build_policy, uniform_policy
from ajpq.core.cost import measure_latency
from ajpq.run.context_source import publish_context
from ajpq.run.pool import EvaluatorPool
from ajpq.search.config import load_config
from ajpq.search.context import data_source_for, prepare_context
from ajpq.task.models import build_model
from ajpq.task.scoring import ScoreSettings, score_policy
from ajpq.task.train import CHECK_EVERY, FinetuneConfig, evaluate, finetune

pytestmark = pytest.mark.gpu


def test_a_policy_scores_on_the_gpu_as_on_the_cpu(digits, digits_model):
    model, graph = digits_model.model, analyze(digits_model.model, torch.zeros(1, 1, 16, 16))
    policy = build_policy(model, graph, LayerKnobs(0.25, 6, 8))
    settings = ScoreSettings(finetune=FinetuneConfig(steps=20), amp="off")
    on_gpu = score_policy(model, policy, graph, digits, settings, "cuda:0")
    on_cpu = score_policy(model, policy, graph, digits, settings, "cpu")
    assert on_gpu.latency_ms > 0 and not on_gpu.diverged
    assert abs(on_gpu.accuracy - on_cpu.accuracy) < 0.03


def test_bf16_autocast_is_close_to_fp32(digits, digits_model):
    model = digits_model.model.to("cuda:0")
    fp32 = evaluate(model, digits.test, "cuda:0", amp="off")
    bf16 = evaluate(model, digits.test, "cuda:0", amp="bf16")
    assert abs(fp32.top1 - bf16.top1) < 0.02 and abs(fp32.loss - bf16.loss) < 0.05


def test_latency_is_timed_on_the_gpu():
    model = build_model("resnet18", 10, 3)
    assert measure_latency(model, (3, 64, 64), 1, "cuda:0", warmup=3, repeats=10) > 0


def test_the_hot_loop_never_syncs_with_the_host():
    model = build_model("resnet18", 10, 3)
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    simulated = apply_policy(model, uniform_policy(graph, 4, 6, "resnet18"), graph).cuda()
    data = TensorDataset(
        torch.randn(64, 3, 32, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    )
    simulated.train()(data.tensors[0][:8])  # calibrate outside the checked region
    torch.cuda.set_sync_debug_mode("error")
    try:
        simulated(data.tensors[0][:8])
        # the loss is read at step CHECK_EVERY only: fewer steps never sync
        finetune(simulated, data, FinetuneConfig(steps=CHECK_EVERY - 1, batch_size=16), "cuda")
    except RuntimeError as error:
        if "synchroniz" not in str(error):
            raise
        pytest.fail(f"a host sync in the hot loop: {error}")
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.ray
def test_two_evaluators_share_one_gpu_fenced_to_half_each(search_config_file, tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False)
    try:
        config = load_config(
            search_config_file(evaluator={"num_evaluators": 2, "num_cpus": 1, "num_gpus": 0.5})
        )
        context, splits = prepare_context(config)
        pool = EvaluatorPool.remote(publish_context(context, data_source_for(config, splits)), None)
        where = ray.get(pool.wait_ready.remote())
        policy = build_policy(context.model, context.graph, LayerKnobs(0.2, 4, 8)).to_json()
        record = ray.get(pool.evaluate.remote(policy))
        ray.kill(pool)
    finally:
        ray.shutdown()
    assert len({w["pid"] for w in where}) == 2
    assert all(w["device"].startswith("cuda:") and w["memory_fraction"] == 0.5 for w in where)
    assert record["gpu_name"] and record["gpu_mem_peak_mb"] > 0
