"""A sweep learns once: trials share the agent (DDPG) and one journal of scores."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ajpq.core.configtypes import ConfigError
from ajpq.run.driver import run_search
from ajpq.run.experience import SharedExperience
from ajpq.run.sweep import run_sweep
from ajpq.search.config import load_config
from ajpq.search.sweep_config import load_sweep

CHEAP = {"scorer": "ajpq.task.scoring:sleep_scorer", "scorer_args": {"min_s": 0.02, "max_s": 0.05}}


def _journal(run_dir: Path) -> dict[str, dict]:
    with sqlite3.connect(run_dir / "journal.sqlite") as db:
        return {k: json.loads(r) for k, r in db.execute("SELECT policy_key, record FROM records")}


def _sweep_file(search_config_file, tmp_path: Path, **sweep) -> Path:
    path = search_config_file(
        agent={"episodes": 6, "warmup_episodes": 3, "env_runners": 1},
        evaluator={"num_evaluators": 1, **CHEAP},
    )
    data = yaml.safe_load(path.read_text())
    data["sweep"] = {"name": "shared", "grid": {"budget.value": [0.2, 0.1]}, **sweep}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "sweep.yaml"


@pytest.mark.ray
def test_a_sweep_of_two_budgets_shares_transitions_and_scores(
    ray_session, search_config_file, tmp_path
):
    config = load_sweep(
        _sweep_file(search_config_file, tmp_path, share_experience=True, max_concurrent_trials=1)
    )
    outcome = run_sweep(config)
    assert outcome.errors == 0
    client = MlflowClient(config.base.tracking.uri)
    experiment = client.get_experiment_by_name(config.base.tracking.experiment)
    searches = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`ajpq.sweep` = '{outcome.sweep_run_id}' and tags.`ajpq.role` = 'search'",
    )
    assert len(searches) == 2
    first, second = sorted(searches, key=lambda r: r.info.start_time)
    assert "ajpq.inherited_transitions" not in first.data.tags
    assert int(second.data.tags["ajpq.inherited_transitions"]) > 0  # the first trial's
    # no policy scored twice: a key both trials hold is one evaluation (same start time)
    journals = [_journal(Path(r.data.tags["ajpq.run_dir"])) for r in (first, second)]
    for key in journals[0].keys() & journals[1].keys():
        assert journals[0][key]["eval_start_ts"] == journals[1][key]["eval_start_ts"]
    shared = SharedExperience(outcome.sweep_dir / "experience")
    with sqlite3.connect(shared.scores) as db:
        keys = {k for (k,) in db.execute("SELECT policy_key FROM records")}
    assert keys == journals[0].keys() | journals[1].keys()
    assert shared.agent() is not None


@pytest.mark.ray
def test_a_policy_an_earlier_search_scored_is_not_scored_again(
    ray_session, search_config_file, tmp_path
):
    experience = str(tmp_path / "experience")
    outcomes = []
    for seed in (0, 1):  # uniform: the same candidates whatever the seed
        config = load_config(
            search_config_file(
                method="uniform",
                agent={"episodes": 3, "seed": seed},
                evaluator=CHEAP,
                experience_dir=experience,
            )
        )
        outcomes.append(run_search(config))
    first, second = outcomes
    assert first.stats["shared_hits"] == 0 and first.episodes == 3
    assert second.stats["shared_hits"] == second.episodes == 3
    assert _journal(first.run_dir).keys() == _journal(second.run_dir).keys()
    for key, record in _journal(second.run_dir).items():
        assert record["eval_start_ts"] == _journal(first.run_dir)[key]["eval_start_ts"]


def test_shared_trials_must_not_vary_what_the_scores_depend_on(search_config_file, tmp_path):
    path = _sweep_file(search_config_file, tmp_path, share_experience=True)
    data = yaml.safe_load(path.read_text())
    data["sweep"]["grid"]["scoring.finetune.steps"] = [5, 10]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="must not vary scoring.finetune.steps"):
        load_sweep(path)


@pytest.mark.ray
def test_the_screen_learns_from_the_earlier_trials_scores(
    ray_session, search_config_file, tmp_path
):
    """A search that shares a sweep's experience fits its accuracy predictor on the earlier
    trials' scores too: it screens from its first proposals, long before 8 records of its own."""
    experience = str(tmp_path / "experience")
    earlier = load_config(
        search_config_file(
            method="random",
            agent={"episodes": 12, "seed": 3},
            evaluator=CHEAP,
            experience_dir=experience,
        )
    )
    assert run_search(earlier).episodes == 12
    later = load_config(
        search_config_file(
            agent={"episodes": 5, "warmup_episodes": 2, "env_runners": 1, "screen": 4, "seed": 1},
            evaluator=CHEAP,
            experience_dir=experience,
        )
    )
    outcome = run_search(later)
    assert outcome.episodes + outcome.stats["shared_hits"] >= 5
    assert outcome.stats["screened"] > 0  # with fewer than 8 records of its own
