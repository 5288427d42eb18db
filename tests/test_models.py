"""The article's networks and the module's loss and metrics."""

import pytest
import torch

from maist.models import DeepMnistCNN, LinearSoftmax, ModernCNN
from maist.module import MaistModule


def test_cnn_shapes_follow_the_article():
    net = DeepMnistCNN(num_classes=71)
    maps = net.features(torch.zeros(2, 1, 28, 28))
    assert maps["conv1"].shape == (2, 32, 28, 28)  # SAME padding keeps 28×28
    assert maps["pool1"].shape == (2, 32, 14, 14)
    assert maps["pool2"].shape == (2, 64, 7, 7)
    assert net.fc1.in_features == 7 * 7 * 64 and net.fc1.out_features == 1024
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 71)


def test_one_filter_and_average_pooling_are_config_values():
    net = DeepMnistCNN(num_classes=71, filters=(1, 1), pool="avg")
    assert net.fc1.in_features == 7 * 7 * 1
    assert isinstance(net.pool, torch.nn.AvgPool2d)
    with pytest.raises(ValueError, match="pool"):
        DeepMnistCNN(pool="median")


def test_tensorflow_initialisation():
    torch.manual_seed(0)
    net = DeepMnistCNN(num_classes=71)
    w = net.fc1.weight
    assert w.abs().max() <= 0.2 + 1e-6  # truncated at two standard deviations
    assert w.std().item() == pytest.approx(0.088, abs=0.005)  # std of N(0, 0.1) cut at ±2σ
    assert torch.all(net.conv1.bias == 0.1) and torch.all(net.fc2.bias == 0.1)


def test_keep_prob_drives_dropout_in_training_only():
    torch.manual_seed(0)
    net = DeepMnistCNN(num_classes=5, hidden=64)
    x = torch.rand(4, 1, 28, 28)
    net.train()
    net.keep_prob = 1.0
    a, b = net(x), net(x)
    assert torch.equal(a, b)  # keep 1.0: no dropout
    net.keep_prob = 0.3
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_linear_zero_init_predicts_uniformly():
    net = LinearSoftmax(num_classes=71)
    probs = net(torch.rand(3, 1, 28, 28)).softmax(1)
    assert torch.allclose(probs, torch.full_like(probs, 1 / 71))


def test_modern_cnn_any_input_size():
    net = ModernCNN(num_classes=71, channels=(8, 16))
    for size in (28, 32, 48):
        assert net(torch.zeros(2, 1, size, size)).shape == (2, 71)


def _module(reduction):
    return MaistModule(net={"_target_": "maist.models.LinearSoftmax", "num_classes": 3, "image_size": 4},
                       optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
                       loss_reduction=reduction, classes=["あ", "い", "う"])


def test_summed_loss_is_batch_times_mean():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 3), torch.randint(3, (50,))
    assert _module("sum").loss(logits, y).item() == pytest.approx(50 * _module("mean").loss(logits, y).item(), rel=1e-5)
    with pytest.raises(ValueError, match="loss_reduction"):
        _module("max")


def test_hyperparameters_are_plain_and_rebuild_the_model(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"net": {"_target_": "maist.models.LinearSoftmax", "num_classes": 3, "image_size": 4}})
    m = MaistModule(net=cfg.net, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
                    classes=OmegaConf.create(["あ", "い", "う"]), preprocess={"image_size": 4})
    assert type(m.hparams.net) is dict and type(m.hparams.classes) is list
    assert m.classes == ["あ", "い", "う"]
