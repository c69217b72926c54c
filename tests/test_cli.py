"""The command line: one-line errors, exit codes, nothing left behind by a refused search."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ajpq.cli import main
from ajpq.search.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("agent.episodez=3", "unknown key agent.episodez"),
        ("agent.episodes=three", "agent.episodes: must be a valid integer, got 'three'"),
        ("model=resnet9", "model: unknown model 'resnet9'; use one of"),
        (
            "model=nosuchpkg.nets:build",
            "model 'nosuchpkg.nets:build': cannot import 'nosuchpkg.nets'",
        ),
        ("data.name=mnist", "data.name: unknown value 'mnist'"),
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
        # the local Ray's CPU count depends on which test started it; the GPUs do not
        ("evaluator.num_gpus=1", "CPUs and 0 GPUs; lower the request or add such nodes"),
        ("tracking.uri=http://127.0.0.1:9", "tracking URI http://127.0.0.1:9 does not answer"),
        ("evaluator.scorer=nosuchpkg.mod:score", "evaluator.scorer: cannot import 'nosuchpkg.mod'"),
        ("evaluator.scorer=ajpq.task.scoring", "is not of the form package.module:function"),
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


BAD_OVERRIDES = [
    ("agent.episodes=0", "agent.episodes: must be greater than or equal to 1, got 0"),
    ("agent.episodes=true", "agent.episodes: must be a valid integer, got True"),
    ("agent.actor_lr=0", "agent.actor_lr: must be greater than 0"),
    ("agent.critic_lr=-1", "agent.critic_lr: must be greater than 0"),
    ("agent.tau=2", "agent.tau: must be less than or equal to 1"),
    ("agent.hiddens=[]", "agent.hiddens: must have at least 1 item"),
    ("agent.hiddens=[64, 0]", "agent.hiddens[1]: must be greater than or equal to 1"),
    ("agent.batch_size=0", "agent.batch_size: must be greater than or equal to 1"),
    ("agent.noise_decay=0", "agent.noise_decay: must be greater than 0"),
    ("agent.credit_assignment=mc", "agent.credit_assignment: unknown value 'mc'; use one of"),
    ("agent.reward=other", "agent.reward: unknown value 'other'"),
    ("agent.seed=-1", "agent.seed: must be greater than or equal to 0"),
    ("scoring.finetune.lr=0", "scoring.finetune.lr: must be greater than 0"),
    ("scoring.finetune.lr=.nan", "scoring.finetune.lr: must be a finite number"),
    ("scoring.finetune.batch_size=-1", "scoring.finetune.batch_size: must be greater than or"),
    ("scoring.finetune.steps=-1", "scoring.finetune.steps: must be greater than or equal to 0"),
    ("scoring.finetune.optimizer=rmsprop", "scoring.finetune.optimizer: unknown value 'rmsprop'"),
    ("scoring.finetune.stepz=3", "unknown key scoring.finetune.stepz; known keys here: batch"),
    ("scoring.val_samples=0", "scoring.val_samples: must be greater than or equal to 1"),
    ("evaluator.timeout_s=0", "evaluator.timeout_s: must be greater than 0"),
    ("evaluator.max_retries=-1", "evaluator.max_retries: must be greater than or equal to 0"),
    ("evaluator.num_evaluators=0", "evaluator.num_evaluators: must be greater than or equal"),
    ("evaluator.num_cpus=0", "evaluator.num_cpus: must be greater than 0"),
    ("evaluator.torch_threads=0", "evaluator.torch_threads: must be greater than or equal"),
    ("evaluator.finetune_steps=5", "unknown key evaluator.finetune_steps; known keys here"),
    ("evaluator.scorer_args={a: x}", "evaluator.scorer_args.a: must be a valid number"),
    ("budget.value=.nan", "budget.value: must be a finite number"),
    ("budget.value=0", "budget.value: must be greater than 0"),
    ("budget.value=5", "budget.value: 5.0 must be in (0, 1] for a size ratio of fp32"),
    ("budget.kind=flops", "budget.kind: unknown value 'flops'"),
    ("space.min_weight_bits=9", "space.min_weight_bits: must be less than or equal to 8"),
    ("space.min_act_bits=1", "space.min_act_bits: must be greater than or equal to 2"),
    ("space.max_sparsity=1", "space.max_sparsity: must be less than 1"),
    ("data.val_fraction=0", "data.val_fraction: must be greater than 0"),
    ("data.image_size=2", "data.image_size: must be greater than or equal to 8"),
    ("data.name=cifar10", "data.path: dataset cifar10 needs a local path"),
    ("tracking.uri=ftp://host/x", "tracking.uri: unknown scheme 'ftp'"),
    ("ray_num_cpus=0", "ray_num_cpus: must be greater than or equal to 1"),
    ("scoring.latency_runtime=tensorrt", "scoring.latency_runtime: tensorrt times policies on a"),
    ("weights=/nonexistent/w.pt", "weights: /nonexistent/w.pt does not exist"),
    ("agent=3", "agent: expected a mapping"),
    ("agent.episodes", "--set 'agent.episodes': expected key=value"),
]


def _no_files_left(tmp_path):
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_values_give_one_line_and_leave_nothing(
    search_config_file, tmp_path, capsys, override, message
):
    code = main(["search", "--config", str(search_config_file()), "--set", override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    _no_files_left(tmp_path)


def _bad_file(tmp_path, kind):
    if kind == "folder":
        return tmp_path
    if kind == "missing":
        return tmp_path / "missing.yaml"
    path = tmp_path / f"{kind}.yaml"
    path.write_text({"empty": "", "syntax": "model: [digits_cnn\n", "list": "- 1\n"}[kind])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("folder", "is a folder; give a YAML file in it"),
        ("missing", "does not exist"),
        ("empty", "is empty; start from tune_configs/digits_demo.yaml"),
        ("syntax", "not valid YAML"),
        ("list", "expected a mapping at the top level"),
    ],
)
def test_bad_config_files_give_one_line(tmp_path, capsys, kind, message):
    code = main(["search", "--config", str(_bad_file(tmp_path, kind))])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ajpq_runs").exists()


def test_output_dir_that_is_a_file_and_nothing_to_resume(search_config_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = str(search_config_file())
    assert main(["search", "--config", path, "--set", f"output_dir={blocker}"]) == 2
    assert "output_dir: " in capsys.readouterr().err
    assert main(["search", "--config", path, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and len(err.strip().splitlines()) == 1
    _no_files_left(tmp_path)


@pytest.mark.ray
def test_resume_with_another_config_is_refused(ray_session, search_config_file, capsys):
    path = str(
        search_config_file(
            agent={"episodes": 3, "warmup_episodes": 3, "env_runners": 1},
            evaluator={
                "num_evaluators": 1,
                "scorer": "ajpq.task.scoring:sleep_scorer",
                "scorer_args": {"min_s": 0.01, "max_s": 0.02},
            },
        )
    )
    assert main(["search", "--config", path]) == 0
    capsys.readouterr()
    code = main(["search", "--config", path, "--resume", "--set", "agent.hiddens=[64, 64]"])
    err = capsys.readouterr().err
    assert code == 2
    assert "was started with agent.hiddens=[32, 32], not [64, 64]" in err
    assert len(err.strip().splitlines()) == 1
    # refused before touching anything: the parent run is still FINISHED
    config = load_config(path)
    latest = Path(config.output_dir) / "digits_cnn-digits-size0.1-s0" / "latest.json"
    parent = json.loads(latest.read_text())["parent_run_id"]
    assert MlflowClient(config.tracking.uri).get_run(parent).info.status == "FINISHED"
    # more episodes is a legitimate resume
    assert main(["search", "--config", path, "--resume", "--set", "agent.episodes=4"]) == 0


def test_export_writes_one_onnx_form_of_three():
    from ajpq.cli import build_parser

    forms = {"--onnx": "integer", "--onnx-float": "float", "--onnx-tensorrt": "tensorrt"}
    for flag, form in forms.items():
        assert build_parser().parse_args(["export", "--config", "c.yaml", flag]).onnx == form
    with pytest.raises(SystemExit):  # one form per export
        build_parser().parse_args(["export", "--config", "c.yaml", "--onnx", "--onnx-tensorrt"])
