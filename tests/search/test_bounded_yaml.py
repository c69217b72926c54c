"""YAML within limits: aliases that expand past the node limit, deep nesting and oversized
text are refused at once; ordinary anchors still work."""

import time

import pytest

from ajpq.core.configtypes import ConfigError
from ajpq.search.bounded_yaml import MAX_BYTES, load_yaml


def test_ordinary_yaml_and_anchors_load():
    assert load_yaml("a: &x {b: 1}\nc: *x\n", "f") == {"a": {"b": 1}, "c": {"b": 1}}
    assert load_yaml("", "f") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
            + "\n".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]"
                for i in range(8)
            ),
            "expands to more than",
        ),
        ("a: " + "[" * 200 + "]" * 200, "nested deeper than 64 levels"),
        ("#" * (MAX_BYTES + 1), "byte limit"),
        ("a: [1, 2", "not valid YAML"),
    ],
)
def test_hostile_text_is_refused_fast(text, message):
    started = time.time()
    with pytest.raises(ConfigError, match=message):
        load_yaml(text, "hostile.yaml")
    assert time.time() - started < 1.0
