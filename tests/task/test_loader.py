"""The one package.module:attr loader: errors name the object, moved modules still load."""

import pytest

from ajpq.task import scoring
from ajpq.task.loader import load_object


def test_loads_and_maps_moved_modules():
    assert load_object("ajpq.task.scoring:sleep_scorer", "x", "") is scoring.sleep_scorer
    assert load_object("ajpq.scoring:score_policy", "x", "") is scoring.score_policy


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "evaluator.scorer: 'nocolon' is not of the form package.module:function"),
        ("nosuchpkg.m:f", "evaluator.scorer: cannot import 'nosuchpkg.m' (No module named"),
        ("ajpq.task.scoring:nothing", "evaluator.scorer: ajpq.task.scoring has no function"),
        ("ajpq.task.scoring:DEFAULT_SCORER", "has no function 'DEFAULT_SCORER'"),
    ],
)
def test_errors_name_the_key_and_the_cause(spec, message):
    with pytest.raises(ValueError) as error:
        load_object(spec, "evaluator.scorer", "install it on every node")
    assert str(error.value).startswith(message) or message in str(error.value)
