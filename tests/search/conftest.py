from pathlib import Path

import pytest
import yaml


@pytest.fixture()
def search_config_file(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch):
    """A small, fast digits search config writing into tmp_path."""
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))

    def make(**sections) -> Path:
        data = {
            "model": "digits_cnn",
            "data": {"name": "digits"},
            "budget": {"kind": "size", "value": 0.1},
            "agent": {
                "episodes": 8,
                "warmup_episodes": 4,
                "env_runners": 2,
                "hiddens": [32, 32],
                "batch_size": 16,
                "seed": 0,
            },
            "evaluator": {
                "num_evaluators": 2,
                "num_cpus": 1,
                "finetune_steps": 5,
                "latency_repeats": 3,
            },
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "test"},
            "output_dir": str(tmp_path / "runs"),
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                data[key] = {**data.get(key, {}), **value}
            else:
                data[key] = value
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make
