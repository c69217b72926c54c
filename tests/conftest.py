"""Shared fixtures: tiny data, the digits CNN trained once per session (cached in a temp dir)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from ajpq.task.data import DataConfig, DataSplits, load_dataset
from ajpq.task.pretrain import PretrainResult, pretrained_model

torch.set_num_threads(2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped, saying so, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: `make gpu-check` runs these on one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
                # the orchestration under test, not the levers (tests/run/test_levers.py): every
                # proposal scored, random warm-up
                "prior": "none",
                "screen": 1,
            },
            "evaluator": {"num_evaluators": 2, "num_cpus": 1},
            # the proxy's re-scoring is tested on its own (tests/run/test_fidelity.py)
            "scoring": {
                "finetune": {"steps": 5},
                "latency_repeats": 3,
                "fidelity": {"top_k": 0, "random_k": 0},
            },
            # the best model's ONNX is checked once (tests/run/test_search_e2e.py)
            "tracking": {
                "uri": f"sqlite:///{tmp_path}/mlflow.db",
                "experiment": "test",
                "model_onnx": None,
            },
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


class MlflowServer:
    """A real ``mlflow server`` on loopback that a test can stop and start again (same port,
    same database): a tracking server outage."""

    def __init__(self, root: Path, store_uri: str | None = None, command: str = "server") -> None:
        self.root = root
        self.store_uri = store_uri or f"sqlite:///{root}/server.db"
        self.command = command  # "server", or "ui" for the UI over an existing store
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = root / "mlflow-server.log"

    def start(self, timeout_s: float = 120.0) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("mlflow")),
                    self.command,
                    "--backend-store-uri",
                    self.store_uri,
                    *(
                        ["--artifacts-destination", str(self.root / "server-artifacts")]
                        if self.command == "server"
                        else []
                    ),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *(["--workers", "1"] if self.command == "server" else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture()
def mlflow_server(tmp_path: Path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def mlflow_ui(tmp_path: Path):
    """Start ``mlflow ui`` on loopback over a given store; stopped (by its process) after."""
    started: list[MlflowServer] = []

    def start(store_uri: str) -> MlflowServer:
        server = MlflowServer(tmp_path, store_uri, command="ui")
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture()
def tracking_server(mlflow_server: MlflowServer) -> str:
    return mlflow_server.uri
