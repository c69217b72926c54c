"""Checks of what the user brings: weights files, models and scorers, one line each."""

import pytest
import torch
from torch import nn

from ajpq.task.checks import check_model, check_scorer, is_builtin, load_weights
from ajpq.task.models import build_model
from ajpq.task.scoring import PolicyScore


def test_weights_load_or_say_what_is_wrong(tmp_path):
    model = build_model("digits_cnn", 10, 1)
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    load_weights(build_model("digits_cnn", 10, 1), good)
    cases = {
        "junk.pt": (b"not a pickle", r"not a state dict \("),
        "model.pt": (model, "it holds a pickled object"),
        "linear.pt": (nn.Linear(2, 2).state_dict(), "keys do not match the model, e.g."),
        "head.pt": (build_model("digits_cnn", 3, 1).state_dict(), "other shapes"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(ValueError, match=message):
            load_weights(model, path)
    with pytest.raises(ValueError, match="no such file"):
        load_weights(model, tmp_path / "missing.pt")


def test_a_model_must_fit_the_data():
    check_model(build_model("digits_cnn", 10, 1), "digits_cnn", (1, 16, 16), 10)
    with pytest.raises(ValueError, match="has 10 outputs, the data has 4 classes"):
        check_model(build_model("digits_cnn", 10, 1), "m", (1, 16, 16), 4)
    with pytest.raises(ValueError, match=r"cannot run on the data's input \(3, 16, 16\)"):
        check_model(build_model("digits_cnn", 10, 1), "m", (3, 16, 16), 10)


def test_a_scorer_is_called_once_and_must_return_a_score():
    call = ("model", "policy", "graph", "splits", "settings", "cpu")

    def good(model, policy, graph, splits, settings, device):
        return PolicyScore(0.5, 0.9, 1.0, 8.0, 1.0, 0.1, 1.0, 1.0, False, 0.0, 0.0, 0.0, 0.0)

    check_scorer("m:good", good, call, {})
    with pytest.raises(ValueError, match="returned dict, not an ajpq.task.scoring.PolicyScore"):
        check_scorer("m:bad", lambda *args: {}, call, {})
    with pytest.raises(ValueError, match="does not take"):
        check_scorer("m:two", lambda model, policy: None, call, {})
    assert is_builtin("ajpq.task.scoring:score_policy") and not is_builtin("mine.score:f")
