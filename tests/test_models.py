"""The article's networks and the module's loss and metrics."""

import pytest
import torch

from maist.models import DeepMnistCNN, LinearSoftmax, ModernCNN
from maist.module import MaistModule
from tests.helpers import quiet_trainer


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
    return MaistModule(
        net={"_target_": "maist.models.LinearSoftmax", "num_classes": 3, "image_size": 4},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        loss_reduction=reduction,
        classes=["あ", "い", "う"],
    )


def test_summed_loss_is_batch_times_mean():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 3), torch.randint(3, (50,))
    assert _module("sum").loss(logits, y).item() == pytest.approx(50 * _module("mean").loss(logits, y).item(), rel=1e-5)
    with pytest.raises(ValueError, match="loss_reduction"):
        _module("max")


def _plain_types(value, where="hparams"):
    """Every (path, type) in a nested value that is not a plain Python container or scalar."""
    if type(value) is dict:
        return [bad for k, v in value.items() for bad in _plain_types(v, f"{where}.{k}")]
    if type(value) is list:
        return [bad for i, v in enumerate(value) for bad in _plain_types(v, f"{where}[{i}]")]
    return [] if value is None or type(value) in (str, int, float, bool) else [(where, type(value).__name__)]


def test_hyperparameters_are_plain_and_rebuild_the_model(tmp_path):
    """Hydra hands the module OmegaConf nodes; what it saves must be plain dicts and lists (a
    checkpoint is read with weights_only=True) and rebuild the same model, optimizer and schedule."""
    from omegaconf import OmegaConf

    from maist.checkpoint import load_module

    cfg = OmegaConf.create(
        {
            "net": {"_target_": "maist.models.ModernCNN", "num_classes": 3, "image_size": 12, "channels": [4, 8]},
            "optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.01, "weight_decay": 1e-4},
            "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 5, "interval": "step"},
            "augment": {"_target_": "maist.augment.BatchAffine", "rotate": 10, "scale": [0.9, 1.1]},
            "classes": ["あ", "い", "う"],
            "preprocess": {"image_size": 12, "contrast": "stretch"},
        }
    )
    torch.manual_seed(0)
    m = MaistModule(**cfg, loss_reduction="mean", label_smoothing=0.1, class_set="hiragana71", seed=3)
    assert _plain_types(dict(m.hparams)) == []
    assert m.hparams.net["channels"] == [4, 8] and m.classes == ["あ", "い", "う"]
    with torch.no_grad():  # weights unlike a fresh initialisation's, so loading them is what is tested
        for p in m.parameters():
            p.add_(torch.randn_like(p))

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    rebuilt, ckpt = load_module(path)  # torch.load(weights_only=True): plain values only
    assert ckpt["hyper_parameters"] == dict(m.hparams)
    assert dict(rebuilt.hparams) == dict(m.hparams)
    assert str(rebuilt.net) == str(m.net) and type(rebuilt.augment) is type(m.augment)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    x = torch.rand(4, 1, 12, 12)
    assert torch.equal(rebuilt(x), m.eval()(x))
    opt, rebuilt_opt = m.configure_optimizers(), rebuilt.configure_optimizers()
    assert type(rebuilt_opt["optimizer"]) is torch.optim.AdamW
    assert rebuilt_opt["optimizer"].defaults == opt["optimizer"].defaults
    assert type(rebuilt_opt["lr_scheduler"]["scheduler"]) is torch.optim.lr_scheduler.StepLR
    assert rebuilt_opt["lr_scheduler"]["interval"] == "step"


def test_modern_ensemble_averages_its_members_log_probabilities():
    from maist.models import ModernEnsemble

    torch.manual_seed(0)
    net = ModernEnsemble(members=3, num_classes=5, channels=(4, 8), convs_per_stage=1).eval()
    x = torch.rand(2, 1, 28, 28)
    members = torch.stack([m(x).log_softmax(-1) for m in net.members])
    assert torch.allclose(net(x), members.mean(0))
    assert not torch.allclose(members[0], members[1])  # each its own initialisation
    with pytest.raises(ValueError, match="members"):
        ModernEnsemble(members=0)


# ---------------------------------------------------------------------- weight averaging
def _fit(steps, callbacks, ckpt_path=None, seed=0):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(48, 1, 12, 12, generator=g), torch.randint(3, (48,), generator=g))
    module = MaistModule(
        net={
            "_target_": "maist.models.ModernCNN",
            "num_classes": 3,
            "image_size": 12,
            "channels": [4, 8],
            "convs_per_stage": 1,
        },
        optimizer={"_target_": "torch.optim.AdamW", "lr": 0.01},
        loss_reduction="mean",
        classes=["あ", "い", "う"],
    )
    trainer = quiet_trainer(max_steps=steps, callbacks=callbacks)
    trainer.fit(module, DataLoader(data, batch_size=8), ckpt_path=ckpt_path, weights_only=False)
    return module, trainer


def test_weight_average_is_what_checkpoints_hold_and_resumes_exactly(tmp_path):
    """Weight averaging is Lightning's EMAWeightAveraging (``+callbacks.ema._target_=lightning.pytorch.
    callbacks.EMAWeightAveraging``): a checkpoint's ``state_dict`` holds the average (what predict,
    export, the page and ``train=false`` read through maist.checkpoint), the training weights travel
    beside it, and a run resumed from a checkpoint continues exactly as an uninterrupted one."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from maist.callbacks.checkpoints import LastCheckpoint
    from maist.checkpoint import build_module

    def saved(trainer, name):
        trainer.save_checkpoint(tmp_path / name)
        return torch.load(tmp_path / name, weights_only=True)

    module, straight = _fit(12, [EMAWeightAveraging(decay=0.9)])
    end = saved(straight, "end.ckpt")
    state = module.state_dict()
    assert all(torch.equal(end["state_dict"][k], state[k]) for k in state)  # fit ends with the average in
    rebuilt = build_module(end, "end.ckpt")  # the one checkpoint reader takes it as it is
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in end["state_dict"].items())

    # a checkpoint saved mid-run (as last.ckpt is): the average, and the training weights beside it
    _fit(6, [EMAWeightAveraging(decay=0.9), LastCheckpoint(str(tmp_path), "six.ckpt", every_n_steps=6)])
    mid = torch.load(tmp_path / "six.ckpt", weights_only=True)
    assert any(not torch.equal(mid["current_model_state"][k], mid["state_dict"][k]) for k in state)
    _, resumed = _fit(12, [EMAWeightAveraging(decay=0.9)], ckpt_path=tmp_path / "six.ckpt", seed=123)
    again = saved(resumed, "again.ckpt")
    for key in ("state_dict", "current_model_state"):  # the average and the training weights
        assert all(torch.allclose(again[key][k], end[key][k], atol=1e-6) for k in end[key]), key
