"""Shared fixtures: tiny data, the digits CNN trained once per session (cached in a temp dir)."""

from __future__ import annotations

import pytest
import torch

from ajpq.data import DataConfig, DataSplits, load_dataset
from ajpq.models import PretrainResult, pretrained_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_config() -> DataConfig:
    return DataConfig("digits")


@pytest.fixture(scope="session")
def digits(digits_config: DataConfig) -> DataSplits:
    return load_dataset(digits_config)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="session")
def digits_model(digits_config: DataConfig, digits: DataSplits, model_cache) -> PretrainResult:
    return pretrained_model("digits_cnn", digits_config, digits, cache_dir=model_cache)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session, with a fixed logical CPU count."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # our own, even if another Ray runs here
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()
