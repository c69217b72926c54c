"""Trained heads: a practitioner's weights with another head (1000 ImageNet classes on 4 of
their own) or stem load, the new modules are trained before the search and cached; a network
that still cannot beat chance stops the search with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ajpq.search.config import SearchConfig
from ajpq.search.context import prepare_context
from ajpq.task.data import DataConfig, load_dataset
from ajpq.task.models import build_model, build_model_fresh
from ajpq.task.pretrain import HeadRecipe, fit_reference, plan_pretraining, store_pretrained

COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def _image_folder(root, per_class=(24, 12)):
    """Four classes of noisy colour patches (easy to learn from any features)."""
    rng = np.random.default_rng(0)
    for part, count in zip(("train", "val"), per_class):
        for label, color in enumerate(COLORS):
            folder = root / part / f"class{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(np.array(color) + rng.normal(0, 40, (24, 24, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def imagenet_state(tmp_path_factory):
    """A torchvision resnet18 state dict as a practitioner has it: 1000-class head."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet18", 1000, 3).state_dict(), path)
    return str(path)


def test_a_state_dict_with_another_head_loads_all_but_the_head(imagenet_state):
    model, fresh = build_model_fresh("resnet18", 4, 3, imagenet_state)
    assert fresh == ("fc",) and model.fc.out_features == 4
    saved = torch.load(imagenet_state, weights_only=True)
    assert torch.equal(model.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])
    _, both = build_model_fresh("resnet18", 4, 1, imagenet_state)
    assert both == ("conv1", "fc")


def test_the_new_head_is_trained_before_the_search_and_cached(folder, imagenet_state, tmp_path):
    data = DataConfig(name="imagefolder", path=str(folder), image_size=32, val_fraction=0.25)
    splits = load_dataset(data)
    head = HeadRecipe(steps=60, finetune_steps=20, batch_size=16)
    plan = plan_pretraining("resnet18", data, splits, None, tmp_path, imagenet_state, head)
    assert plan.fresh == ("fc",) and not plan.cached
    result = fit_reference(plan, splits)
    store_pretrained(plan, result.model)
    assert result.val_top1 > 0.25 + 0.4  # chance is 0.25
    again = plan_pretraining("resnet18", data, splits, None, tmp_path, imagenet_state, head)
    assert again.cached and again.path == plan.path  # keyed by weights + data + recipe
    assert fit_reference(again, splits).val_top1 == pytest.approx(result.val_top1)


def test_a_network_at_chance_stops_the_search_with_one_line(
    folder, imagenet_state, tmp_path, monkeypatch
):
    monkeypatch.setenv("AJPQ_CACHE", str(tmp_path))
    torch.manual_seed(0)  # the untrained head's draw
    config = SearchConfig.from_dict(
        {
            "model": "resnet18",
            "weights": imagenet_state,
            "head": {"steps": 0, "finetune_steps": 0},  # the new head stays untrained
            "data": {"name": "imagefolder", "path": str(folder), "image_size": 32},
        }
    )
    with pytest.raises(ValueError, match=r"within 0.05 of chance \(0.250 for 4 classes\)"):
        prepare_context(config)
