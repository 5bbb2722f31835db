import pytest
import torch

from audit.training.resnets import ResNet9, ResNet18, build_model


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [12, 32])
def test_resnet9_shapes(size):
    model = ResNet9(n_classes=7, width=4).eval()
    x = torch.randn(3, 3, size, size)
    assert model(x).shape == (3, 7)
    assert model.features(x).shape == (3, 8) == (3, model.n_features)


@pytest.mark.parametrize("size", [32, 64])
def test_resnet18_shapes(size):
    model = ResNet18(n_classes=5, width=4).eval()
    x = torch.randn(2, 3, size, size)
    assert model(x).shape == (2, 5)
    assert model.features(x).shape == (2, 32) == (2, model.n_features)


def test_resnet9_matches_the_published_layer_list():
    # conv widths 3-64-128(5x5)-[128,128]-256-[256,256]-128, a BN (2 params per channel) after
    # each conv, bias-free 128x10 head: the FFCV / datamodels CIFAR-10 ResNet-9
    convs = [(3, 64, 3), (64, 128, 5), (128, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 256, 3),
             (256, 128, 3)]
    expected = sum(ci * co * k * k + 2 * co for ci, co, k in convs) + 128 * 10
    assert _n_params(ResNet9(n_classes=10, width=64)) == expected


def test_resnet18_has_the_standard_parameter_count():
    # torchvision's resnet18() (1000 classes) has 11,689,512 parameters
    assert _n_params(ResNet18(n_classes=1000, width=64)) == 11_689_512


def test_build_model_is_seeded_by_the_global_rng_and_accepts_channels_last():
    torch.manual_seed(3)
    a = build_model("resnet9", n_classes=10, width=4)
    torch.manual_seed(3)
    b = build_model("resnet9", n_classes=10, width=4)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    x = torch.randn(2, 3, 32, 32)
    a.eval()
    out = a(x)
    a_cl = a.to(memory_format=torch.channels_last)
    torch.testing.assert_close(a_cl(x.contiguous(memory_format=torch.channels_last)), out, rtol=1e-4, atol=1e-5)
