import torch
import torchvision
from torch import nn

from ajpq.core.analysis import analyze
from ajpq.core.graph import LayerKind


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 8x8 out
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)  # 4x4 out
        self.pw = nn.Conv2d(8, 4, 1, bias=True)  # 4x4 out
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.pw(self.dw(x)))
        return self.fc(torch.flatten(x, 1))


def test_tiny_net_layers_and_macs_match_hand_counts():
    graph = analyze(TinyNet(), torch.zeros(1, 3, 8, 8))
    names = [layer.name for layer in graph.layers]
    assert names == ["conv1", "dw", "pw", "fc"]
    conv1, dw, pw, fc = graph.layers
    assert conv1.kind is LayerKind.CONV and dw.kind is LayerKind.DEPTHWISE_CONV
    assert pw.kind is LayerKind.CONV and fc.kind is LayerKind.LINEAR
    assert conv1.macs == 3 * 9 * 8 * 64
    assert dw.macs == 1 * 9 * 8 * 16
    assert pw.macs == 8 * 4 * 16
    assert fc.macs == 64 * 5
    assert conv1.params == 8 * 3 * 9 and pw.params == 4 * 8 + 4 and fc.params == 64 * 5 + 5
    assert dw.input_hw == (8, 8) and dw.stride == (2, 2) and dw.groups == 8
    assert graph.total_macs == sum(layer.macs for layer in graph.layers)


def test_tiny_net_groups_couple_depthwise_with_producer_and_map_flatten():
    graph = analyze(TinyNet(), torch.zeros(1, 3, 8, 8))
    by_name = {layer.name: layer.index for layer in graph.layers}
    g_conv1 = graph.groups[graph.layer_group[by_name["conv1"]]]
    assert set(g_conv1.members) == {by_name["conv1"], by_name["dw"]}
    assert set(g_conv1.consumers) == {by_name["pw"]}
    g_pw = graph.groups[graph.layer_group[by_name["pw"]]]
    # channel c of pw feeds fc inputs c*16 .. c*16+15 after the flatten
    index_map = g_pw.consumers[by_name["fc"]]
    assert index_map.shape == (4, 16)
    assert index_map[1].tolist() == list(range(16, 32))
    assert not graph.groups[graph.layer_group[by_name["fc"]]].prunable


def test_resnet18_residual_groups_found():
    model = torchvision.models.resnet18(num_classes=10)
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    assert len(graph.layers) == 21
    member_sets = [{graph.layers[m].name for m in g.members} for g in graph.groups]
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} in member_sets
    assert {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"} in member_sets
    assert {"layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"} in member_sets
    # inner convs of a block are free, the classifier is not prunable
    assert {"layer1.0.conv1"} in member_sets
    fc_group = graph.groups[graph.layer_group[graph.layer_by_name("fc").index]]
    assert not fc_group.prunable
    assert graph.total_macs > 0 and len(graph.signature) == 16
