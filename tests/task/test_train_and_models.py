import pytest
import torch
import torchvision

from ajpq.task.models import ModelName, SmallResNet, build_model
from ajpq.task.pretrain import pretrained_model
from ajpq.task.train import CHECK_EVERY, FinetuneConfig, evaluate, finetune


def test_finetune_is_deterministic_on_cpu(digits):
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        model = SmallResNet(1, 10, width=8)
        result = finetune(model, digits.train, FinetuneConfig(steps=15, lr=0.05, seed=7))
        results.append((result.final_loss, [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_finetune_reports_divergence(digits):
    model = SmallResNet(1, 10, width=8)
    result = finetune(
        model,
        digits.train,
        FinetuneConfig(steps=3 * CHECK_EVERY, lr=1e6, momentum=0.0, cosine=False),
    )
    # the loss is read every CHECK_EVERY steps: the first read stops it
    assert result.diverged and result.steps == CHECK_EVERY


def test_digits_cnn_trains_to_97_percent_and_is_cached(
    digits_model, digits_config, digits, model_cache
):
    assert digits_model.test_top1 >= 0.97
    again = pretrained_model("digits_cnn", digits_config, digits, cache_dir=model_cache)
    assert again.cached and again.test_top1 == digits_model.test_top1
    result = evaluate(digits_model.model, digits.test)
    assert result.top5 >= result.top1 and result.samples == len(digits.test)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11_bn", "resnet50"])
def test_torchvision_models_by_name_with_local_weights(name, tmp_path):
    model = build_model(name, num_classes=7, in_channels=3)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    again = build_model(name, num_classes=7, in_channels=3, weights=str(path))
    x = torch.randn(1, 3, 32, 32)
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert isinstance(
        model,
        getattr(
            torchvision.models,
            {
                "resnet18": "ResNet",
                "resnet50": "ResNet",
                "mobilenet_v2": "MobileNetV2",
                "vgg11_bn": "VGG",
            }[name],
        ),
    )


def test_unknown_model_and_weights_give_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet9'"):
        build_model("resnet9")
    with pytest.raises(ValueError, match="neither a file nor a torchvision weight"):
        build_model(ModelName.RESNET18, weights="NOT_A_WEIGHT")
    grey = build_model("resnet18", num_classes=10, in_channels=1)
    assert grey(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# ~4-5 min of training on 2 cores, a tenth of CI's `make test`: a long scenario, run by
# `make test-slow` (the recipe's fp32 accuracy is also the table's reference in results/fmnist.md,
# and the real IDX files are read in the default suite by tests/task/test_data.py)
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fmnist_cnn_reaches_90_percent(tmp_path):
    from ajpq.task.data import FASHION_MNIST_DIRS, DataConfig, load_dataset

    if not any((d / "t10k-labels-idx1-ubyte.gz").exists() for d in FASHION_MNIST_DIRS):
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    config = DataConfig("fashion_mnist")
    result = pretrained_model("fmnist_cnn", config, load_dataset(config), cache_dir=tmp_path)
    assert not result.cached
    assert result.test_top1 >= 0.90
