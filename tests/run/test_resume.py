"""What --resume may change is marked on the config fields themselves."""

import pytest

from ajpq.core.configtypes import resumable_keys
from ajpq.run.resume import ResumeError, check_same_search, flatten
from ajpq.search.config import SearchConfig


def test_the_resumable_fields_are_how_long_how_parallel_and_where():
    assert resumable_keys(SearchConfig) == {
        "agent.episodes",
        "agent.env_runners",
        "evaluator.num_evaluators",
        "evaluator.num_cpus",
        "evaluator.num_gpus",
        "evaluator.torch_threads",
        "evaluator.max_retries",
        "evaluator.timeout_s",
        "evaluator.start_timeout_s",
        "scoring.latency_repeats",
        "output_dir",
        "ray_address",
        "ray_num_cpus",
        "context_uri",
        "experience_dir",
        "data.num_workers",
        "tracking.log_model",
        "tracking.register_model",
        "tracking.model_onnx",
    }
    # every marked key is a real key of the config (a renamed field keeps its mark)
    assert resumable_keys(SearchConfig) <= set(flatten(SearchConfig().to_dict()))


def test_only_resumable_fields_may_change(tmp_path):
    saved = SearchConfig.from_dict({"agent": {"episodes": 10}})
    longer = SearchConfig.from_dict({"agent": {"episodes": 20}, "evaluator": {"num_evaluators": 4}})
    check_same_search(saved, longer, tmp_path)
    other = SearchConfig.from_dict({"agent": {"episodes": 10, "actor_lr": 0.01}})
    with pytest.raises(ResumeError, match="agent.actor_lr=0.0001, not 0.01"):
        check_same_search(saved, other, tmp_path)
