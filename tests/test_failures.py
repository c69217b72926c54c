"""Every surface fails cleanly: the user's model factory, weights, scorer and data folder,
credentials in any URI, hostile YAML, a check that needs Ray. Each case: exit 2, one line on
stderr, no traceback, no secret anywhere (output, files, MLflow), no run folder and no MLflow
run left behind, within a time limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from ajpq.cli import main
from ajpq.task.models import SmallResNet, build_model

pytestmark = pytest.mark.ray

SECRET = "s3cr3tPW"
LIMIT_S = 90.0

USER_CODE = """
import torch
from torch import nn

from ajpq.task.scoring import PolicyScore


def raises(num_classes, in_channels):
    raise RuntimeError("no GPU driver found")


def not_a_module(num_classes, in_channels):
    return 42


def three_outputs(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16 * 16, 3))


def rgb_only(num_classes):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))


def raising_scorer(model, policy, graph, splits, settings, device="cpu"):
    raise ValueError("my metric needs labels in [0, 5)")


def float_scorer(model, policy, graph, splits, settings, device="cpu"):
    return 0.93


def two_arg_scorer(model, policy):
    return None
"""


@dataclass(frozen=True)
class Case:
    surface: str
    make: Callable[[Path, Callable[..., Path]], list[str]]  # (tmp_path, config maker) -> argv
    says: str


def _search(config: Path, *sets: str) -> list[str]:
    return ["search", "--config", str(config), *[a for s in sets for a in ("--set", s)]]


def _weights(tmp: Path, content: object | bytes) -> str:
    path = tmp / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return str(path)


def _folder(tmp: Path, classes: dict[str, bytes | None], parts=("train", "val")) -> str:
    root = tmp / "images"
    for part in parts:
        for name, image in classes.items():
            (root / part / name).mkdir(parents=True, exist_ok=True)
            if image is not None:
                (root / part / name / "x.png").write_bytes(image)
    root.mkdir(exist_ok=True)
    return str(root)


def _yaml_file(tmp: Path, text: str) -> list[str]:
    path = tmp / "hostile.yaml"
    path.write_text(text)
    return ["search", "--config", str(path)]


LAUGHS = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "\n".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)
)

CASES = {
    # the user's model factory
    "factory raises": Case(
        "factory",
        lambda t, c: _search(c(model="usernets:raises")),
        "model 'usernets:raises': the factory raised RuntimeError: no GPU driver found",
    ),
    "factory returns no module": Case(
        "factory",
        lambda t, c: _search(c(model="usernets:not_a_module")),
        "the factory returned int, not a module",
    ),
    "factory has 3 outputs": Case(
        "factory",
        lambda t, c: _search(c(model="usernets:three_outputs")),
        "model 'usernets:three_outputs' has 3 outputs, the data has 10 classes",
    ),
    "factory wants RGB": Case(
        "factory",
        lambda t, c: _search(c(model="usernets:rgb_only")),
        "model 'usernets:rgb_only' cannot run on the data's input (1, 16, 16): RuntimeError",
    ),
    "factory not importable": Case(
        "factory",
        lambda t, c: _search(c(model="usernetz:raises")),
        "model 'usernetz:raises': cannot import 'usernetz'",
    ),
    # weights
    "weights random bytes": Case(
        "weights",
        lambda t, c: _search(c(weights=_weights(t, bytes(range(256)) * 8))),
        ": not a state dict (",
    ),
    "weights pickled model": Case(
        "weights",
        lambda t, c: _search(c(weights=_weights(t, build_model("digits_cnn", 10, 1)))),
        "not a state dict (it holds a pickled object; save model.state_dict()",
    ),
    "weights a list": Case(
        "weights",
        lambda t, c: _search(c(weights=_weights(t, [torch.zeros(2)]))),
        "not a state dict (it holds a list; save model.state_dict())",
    ),
    "weights of another network": Case(
        "weights",
        lambda t, c: _search(c(weights=_weights(t, nn.Linear(3, 2).state_dict()))),
        "keys do not match the model, e.g.",
    ),
    "weights of another width": Case(  # another head alone would be trained (test_pretrain)
        "weights",
        lambda t, c: _search(c(weights=_weights(t, SmallResNet(1, 10, width=8).state_dict()))),
        "tensors have other shapes than the model's, e.g. stem.1.weight",
    ),
    # the scorer
    "scorer raises": Case(
        "scorer",
        lambda t, c: _search(c(evaluator={"scorer": "usernets:raising_scorer"})),
        "evaluator.scorer 'usernets:raising_scorer' raised ValueError: my metric needs labels",
    ),
    "scorer returns a float": Case(
        "scorer",
        lambda t, c: _search(c(evaluator={"scorer": "usernets:float_scorer"})),
        "returned float, not an ajpq.task.scoring.PolicyScore",
    ),
    "scorer signature": Case(
        "scorer",
        lambda t, c: _search(c(evaluator={"scorer": "usernets:two_arg_scorer"})),
        "evaluator.scorer 'usernets:two_arg_scorer' does not take (model, policy, graph",
    ),
    "scorer unknown argument": Case(
        "scorer",
        lambda t, c: _search(
            c(evaluator={"scorer": "usernets:float_scorer", "scorer_args": {"alpha": 1.0}})
        ),
        "does not take (model, policy, graph, splits, settings, device, **scorer_args)",
    ),
    # the data folder
    "images without train/val": Case(
        "data folder",
        lambda t, c: _search(
            c(data={"name": "imagefolder", "path": _folder(t, {"a": None}, parts=("all",))})
        ),
        "must hold train/ and val/ folders",
    ),
    "images: empty class": Case(
        "data folder",
        lambda t, c: _search(c(data={"name": "imagefolder", "path": _folder(t, {"a": None})})),
        "train: Found no valid file for the classes a",
    ),
    "images: unreadable file": Case(
        "data folder",
        lambda t, c: _search(
            c(data={"name": "imagefolder", "path": _folder(t, {"a": b"junk", "b": b"junk"})})
        ),
        "cannot read it as an image (UnidentifiedImageError",
    ),
    # credentials in every URI
    "tracking URI": Case(
        "credentials",
        lambda t, c: _search(c(), f"tracking.uri=http://me:{SECRET}@127.0.0.1:9"),
        "tracking URI http://me:***@127.0.0.1:9 does not answer",
    ),
    "Jobs API address": Case(
        "credentials",
        lambda t, c: [
            "submit",
            "--address",
            f"http://me:{SECRET}@127.0.0.1:9",
            "--config",
            str(c()),
        ],
        "no Ray Jobs API at http://me:***@127.0.0.1:9",
    ),
    "tracking URI sent to a job": Case(
        "credentials",
        lambda t, c: [
            "submit",
            "--address",
            "http://127.0.0.1:9",
            "--config",
            str(c()),
            "--tracking-uri",
            f"https://me:{SECRET}@mlflow.example:5000",
        ],
        "--set tracking.uri=...: the value holds a credential",
    ),
    "context_uri": Case(
        "credentials",
        lambda t, c: _search(c(context_uri=f"http://key:{SECRET}@bucket/ctx")),
        "context_uri: http://key:***@bucket/ctx is not storage",
    ),
    "data.path": Case(
        "credentials",
        lambda t, c: _search(
            c(data={"name": "imagefolder", "path": f"s3://key:{SECRET}@bucket/images"})
        ),
        "data.path: s3://key:***@bucket/images does not exist",
    ),
    "output_dir": Case(
        "credentials",
        lambda t, c: _search(c(output_dir=f"http://key:{SECRET}@bucket/runs")),
        "output_dir: http://key:***@bucket/runs is not storage",
    ),
    "a value quoted back": Case(
        "credentials",
        lambda t, c: _search(c(), f"agent.episodes=http://me:{SECRET}@host"),
        "agent.episodes: must be a valid integer, got 'http://me:***@host'",
    ),
    # hostile YAML
    "billion laughs file": Case(
        "hostile YAML",
        lambda t, c: _yaml_file(t, LAUGHS),
        "expands to more than 100000 nodes",
    ),
    "file over 1 MB": Case(
        "hostile YAML",
        lambda t, c: _yaml_file(t, "# padding\n" * 120_000),
        "over the 1000000-byte limit of a config",
    ),
    "deep nesting": Case(
        "hostile YAML",
        lambda t, c: _yaml_file(t, "a: " + "[" * 3000 + "]" * 3000),
        "nested deeper than 64 levels",
    ),
    "--set alias bomb": Case(
        "hostile YAML",
        lambda t, c: _search(c(), "tracking.tags=" + LAUGHS.replace("\n", ", ").join("{}")),
        "expands to more than 100000 nodes",
    ),
    "--set huge value": Case(
        "hostile YAML",
        lambda t, c: _search(c(), "agent.episodes=" + "9x" * 500_000),
        "agent.episodes: must be a valid integer, got '9x9x",
    ),
    # a check that needs Ray
    "latency budget unreachable": Case(
        "after Ray starts",
        lambda t, c: _search(c(budget={"kind": "latency", "value": 1e-6})),
        "latency budget 1e-06 is below the smallest reachable value",
    ),
}


def _files(root: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def _no_secret_anywhere(root: Path, text: str, before: dict[Path, float]) -> None:
    """Not in the output, nor in any file ajpq wrote (the test's own inputs hold it)."""
    assert SECRET not in text
    for path, mtime in _files(root).items():
        if before.get(path) != mtime:
            assert SECRET.encode() not in path.read_bytes(), path


def _nothing_left(root: Path) -> None:
    assert not list(root.rglob("run.json")), "a run folder was left behind"
    db = root / "mlflow.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(experiments), "an MLflow run was left behind"


@pytest.mark.parametrize("name", list(CASES))
def test_every_surface_fails_in_one_line(
    name, ray_session, search_config_file, tmp_path, monkeypatch, capsys
):
    case = CASES[name]
    (tmp_path / "usernets.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = case.make(tmp_path, search_config_file)
    before = _files(tmp_path)
    started = time.time()
    code = main(argv)
    elapsed = time.time() - started
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 600, err[:2000]
    assert "Traceback" not in out + err
    assert case.says in lines[0], lines[0]
    _no_secret_anywhere(tmp_path, out + err, before)
    _nothing_left(tmp_path)
    assert elapsed < LIMIT_S
    print(f"\n{case.surface} | {name} | {elapsed:.2f} s")


def test_debug_shows_the_traceback(search_config_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AJPQ_DEBUG", "0")  # recorded, so the "1" that --debug sets is undone
    (tmp_path / "usernets.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = search_config_file(weights=_weights(tmp_path, [torch.zeros(2)]))
    assert main(["--debug", *_search(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("ajpq: error: weights")


def test_a_search_whose_evaluations_keep_failing_stops_with_the_error(
    search_config_file, model_cache, tmp_path
):
    """A scorer that passes its check but fails on every policy: the first 3 evaluations fail
    with one exception type, the search stops (exit 2, one line naming it) instead of scoring
    every episode; what was scored is in the run folder. Its own process, as a user runs it."""
    path = search_config_file(
        agent={"episodes": 16, "warmup_episodes": 4, "env_runners": 1},
        evaluator={
            "num_evaluators": 1,
            "max_retries": 0,
            "scorer": "ajpq.task.scoring:chaos_scorer",
            "scorer_args": {"error_rate": 1.0, "death_rate": 0.0, "min_s": 0.01, "max_s": 0.02},
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "ajpq.cli", *_search(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "AJPQ_CACHE": str(model_cache)},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("ajpq:")]  # Ray logs too
    assert len(ours) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "the first 3 evaluations all failed with RuntimeError: injected fault" in ours[0]
    journals = list((tmp_path / "runs").rglob("journal.sqlite"))
    assert len(journals) == 1
    from ajpq.run.journal import Journal

    scored = Journal(journals[0]).records()
    assert 3 <= len(scored) < 16 and all(record.failed for record in scored.values())
