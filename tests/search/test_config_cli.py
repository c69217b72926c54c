import subprocess
import sys

import pytest

from ajpq.cli import main
from ajpq.config import ConfigError, SearchConfig, load_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("agent.episodez=3", "unknown key agent.episodez"),
        ("agent.episodes=three", "agent.episodes: expected an integer"),
        ("model=resnet9", "model: unknown model 'resnet9'"),
        ("data.name=mnist", "data.name: unknown dataset 'mnist'"),
        ("data.path=/nonexistent/fmnist", "data.path: /nonexistent/fmnist does not exist"),
        ("budget.value=1.5", "budget.value"),
    ],
)
def test_invalid_configs_give_one_line_errors(search_config_file, capsys, override, message):
    path = search_config_file()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path, [override])
    code = main(["search", "--config", str(path), "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cifar_without_path_is_rejected(search_config_file):
    with pytest.raises(ConfigError, match="data.path: dataset cifar10 needs a local path"):
        load_config(search_config_file(), ["data.name=cifar10"])


def test_config_round_trip_and_missing_file(search_config_file, tmp_path):
    config = load_config(search_config_file())
    assert SearchConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cli_subprocess_exit_code_and_help(search_config_file):
    path = search_config_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "ajpq.cli",
            "search",
            "--config",
            str(path),
            "--set",
            "agent.bogus=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "unknown key agent.bogus" in bad.stderr and "Traceback" not in bad.stderr
    helped = subprocess.run(
        [sys.executable, "search.py", "--help"], capture_output=True, text=True, timeout=300
    )
    assert (
        helped.returncode == 0 and "--resume" in helped.stdout and "--tracking-uri" in helped.stdout
    )


@pytest.mark.parametrize("name", ["digits_demo.yaml", "fmnist.yaml"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    config = load_config(Path(__file__).parents[2] / "tune_configs" / name)
    assert config.agent.episodes > config.agent.warmup_episodes
    assert config.evaluator.num_evaluators >= config.agent.env_runners


def test_unreachable_budget_fails_before_the_search_starts(search_config_file, capsys):
    code = main(["search", "--config", str(search_config_file()), "--set", "budget.value=0.0001"])
    err = capsys.readouterr().err
    assert code == 2
    assert "smallest reachable value" in err and "Traceback" not in err


def test_export_without_a_search_says_to_run_it_first(search_config_file, capsys):
    from ajpq.cli import main

    assert main(["export", "--config", str(search_config_file()), "--steps", "5"]) == 2
    assert "no search of this config" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluator.num_gpus=1", "evaluator.num_gpus=1 but this machine's Ray has 0 GPUs"),
        ("tracking.uri=http://127.0.0.1:9", "tracking URI http://127.0.0.1:9 does not answer"),
        ("evaluator.scorer=nosuchpkg.mod:score", "evaluator.scorer: cannot import 'nosuchpkg.mod'"),
        ("evaluator.scorer=ajpq.scoring", "is not of the form package.module:function"),
    ],
)
def test_environment_problems_fail_fast_and_leave_nothing(
    ray_session, search_config_file, tmp_path, capsys, override, message
):
    """No GPU for the evaluators, a tracking server that does not answer, a scorer that cannot
    be imported: one line, exit 2, in seconds, and no run folder or MLflow file left behind."""
    path = search_config_file()
    code = main(["search", "--config", str(path), "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "mlflow.db").exists()
