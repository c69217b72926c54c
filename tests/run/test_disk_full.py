"""A full disk loses nothing: the run folder's disk (a small tmpfs in a private mount
namespace) fills up mid-search; the search stops with one line naming the folder, what was
journaled stays, nothing half-written is left, and --resume after freeing space finishes the
search without scoring any policy twice."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .isolated_cluster import namespaces_available

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not namespaces_available(), reason="needs root and mount namespaces"),
]

REPO = Path(__file__).resolve().parents[2]
EPISODES = 16

# runs inside `unshare -m`: the tmpfs at $DISK exists for these commands only
SCRIPT = r"""
set -u
mount -t tmpfs -o size=48m ajpqdisk "$DISK" || exit 99
cd "$REPO"
"$PY" -m ajpq.cli search --config "$CONFIG" > "$LOGS/first.out" 2> "$LOGS/first.err"
echo $? > "$LOGS/first.rc"
rm -f "$DISK/filler"
"$PY" -m ajpq.cli search --config "$CONFIG" --resume > "$LOGS/second.out" 2> "$LOGS/second.err"
echo $? > "$LOGS/second.rc"
"$PY" - "$DISK" > "$LOGS/state.json" <<'EOF'
import json, pathlib, sqlite3, sys
disk = pathlib.Path(sys.argv[1])
journal = next(disk.rglob("journal.sqlite"))
rows = sqlite3.connect(journal).execute("SELECT policy_key, episode FROM records").fetchall()
tmp = [str(p) for p in disk.rglob("*.tmp")]
print(json.dumps({"rows": rows, "tmp": tmp, "best": (journal.parent / "best_policy.json").exists()}))
EOF
"""


def test_a_full_disk_stops_the_search_and_resume_finishes_it(tmp_path, digits_model, model_cache):
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    config = {
        "model": "digits_cnn",
        "data": {"name": "digits"},
        "budget": {"kind": "size", "value": 0.1},
        "agent": {"episodes": EPISODES, "warmup_episodes": 4, "env_runners": 1},
        "evaluator": {
            "num_evaluators": 1,
            "num_cpus": 1,
            "scorer": "ajpq.task.scoring:sleep_scorer",
            "scorer_args": {"min_s": 0.4, "max_s": 0.6},
        },
        "tracking": {"uri": f"sqlite:///{logs}/mlflow.db", "experiment": "disk"},
        "output_dir": str(disk / "runs"),
    }
    config["agent"].update(hiddens=[32, 32], batch_size=16)
    config_path = logs / "search.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "DISK": str(disk),
        "LOGS": str(logs),
        "CONFIG": str(config_path),
        "PY": sys.executable,
        "REPO": str(REPO),
        "AJPQ_CACHE": str(model_cache),
    }
    shell = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", SCRIPT], env=env
    )
    try:
        deadline = time.time() + 300
        first = logs / "first.out"
        while time.time() < deadline and shell.poll() is None:
            text = first.read_text() if first.exists() else ""
            if re.search(r"episode ([5-9]|1[0-5])/16", text):
                break
            time.sleep(0.2)
        assert shell.poll() is None, "the search ended before the disk could be filled"
        # fill the tmpfs from inside the search's mount namespace
        subprocess.run(
            ["nsenter", "-t", str(shell.pid), "-m", "dd", "if=/dev/zero", f"of={disk}/filler"],
            capture_output=True,
            timeout=60,
        )
        shell.wait(timeout=600)
    finally:
        if shell.poll() is None:
            shell.kill()
    first_err = (logs / "first.err").read_text()
    assert (logs / "first.rc").read_text().strip() == "2", first_err[-3000:]
    ours = [line for line in first_err.splitlines() if line.startswith("ajpq:")]  # Ray logs too
    assert len(ours) == 1 and "Traceback" not in first_err, first_err[-3000:]
    assert "cannot write" in ours[0] and str(disk / "runs") in ours[0]
    assert (logs / "second.rc").read_text().strip() == "0", (logs / "second.err").read_text()
    state = json.loads((logs / "state.json").read_text())
    keys = [key for key, _ in state["rows"]]
    assert len(keys) == len(set(keys)) == EPISODES  # nothing lost, nothing scored twice
    assert sorted(episode for _, episode in state["rows"]) == list(range(1, EPISODES + 1))
    assert state["tmp"] == [] and state["best"]
