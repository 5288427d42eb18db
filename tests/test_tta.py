"""TestTimeAugmented: the plain network in training, the averaged views in eval."""

from __future__ import annotations

import warnings

import pytest
import torch

from maist.errors import ConfigError
from maist.models import ModernCNN, ModernEnsemble, TestTimeAugmented
from maist.models.tta import apply_view
from maist.module import MaistModule


def images(n=4, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    x[:, :, 6:22, 12:15] = 0.5 + 0.5 * torch.rand(n, 1, 16, 3, generator=g)  # a vertical bar
    x[:, :, 6:9, 8:20] = 1.0  # and a bar across its top
    return x


NET = {"num_classes": 7, "channels": (4, 8), "convs_per_stage": 1}


def tta(views, seed=0):
    torch.manual_seed(seed)
    return TestTimeAugmented(views=views, **NET)


def test_training_mode_is_the_network_itself():
    wrapped = tta([{}, {"rotate": 10}, {"stroke": 0.5}]).train()
    assert isinstance(wrapped.net, ModernCNN)
    x = images()
    torch.manual_seed(1)
    a = wrapped(x)
    torch.manual_seed(1)
    assert torch.equal(a, wrapped.net(x))


def test_eval_averages_the_probabilities_of_the_views():
    views = [{}, {"rotate": 8}, {"scale": 0.9}, {"stroke": -0.4}]
    wrapped = tta(views).eval()
    inner = wrapped.net
    x = images()
    out = wrapped(x)
    by_hand = torch.stack([inner(apply_view(x, **v)).softmax(-1) for v in views]).mean(0)
    assert torch.allclose(out.exp(), by_hand, atol=1e-6)
    assert torch.allclose(out.exp().sum(-1), torch.ones(len(x)), atol=1e-5)
    # one identity view: the network's own probabilities
    one = tta([{}]).eval()
    assert torch.allclose(one(x), one.net(x).log_softmax(-1), atol=1e-5)


def test_views_do_what_they_say():
    x = images(n=2)
    assert apply_view(x) is x
    ink = lambda t: (t > 0.25).float().sum()  # noqa: E731
    assert ink(apply_view(x, scale=1.2)) > ink(x) > ink(apply_view(x, scale=0.8))
    assert apply_view(x, stroke=0.6).sum() > x.sum() > apply_view(x, stroke=-0.6).sum()
    # a quarter turn counter-clockwise puts the vertical bar's ink across the image
    turned = apply_view(x, rotate=90)
    rows, cols = (turned[0, 0] > 0.25).nonzero(as_tuple=True)
    assert cols.max() - cols.min() > rows.max() - rows.min()
    assert apply_view(x, rotate=7, scale=1.1, stroke=0.5).min() >= 0 and apply_view(x, stroke=1).max() <= 1


def test_bad_views_fail():
    with pytest.raises(ConfigError, match=r"model.net.views: \{'shear': 5\} is not a view"):
        tta([{"shear": 5}])
    with pytest.raises(ConfigError, match="model.net.views.scale=0.0: must be a finite number > 0"):
        tta([{"scale": 0}])
    with pytest.raises(ConfigError, match="at least one"):
        tta([])
    for inner in ("TestTimeAugmented", "torch.nn.Linear", "check_view"):  # only the networks MAIST names
        with pytest.raises(ConfigError, match="model.net.inner=.*: must be one of DeepMnistCNN"):
            TestTimeAugmented(views=[{}], inner=inner, **NET)


def test_module_builds_it_from_config_and_evaluates_through_it():
    cfg = {
        "_target_": "maist.models.TestTimeAugmented",
        "views": [{}, {"rotate": 6}],
        "inner": "ModernEnsemble",
        "members": 2,
        **NET,
    }
    module = MaistModule(net=cfg, optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3}, classes=list("abcdefg"))
    assert isinstance(module.net, TestTimeAugmented) and isinstance(module.net.net, ModernEnsemble)
    x = images()
    module.eval()
    with torch.no_grad():
        expected = torch.stack([module.net.net(apply_view(x, **v)).softmax(-1) for v in module.net.views]).mean(0)
        assert torch.allclose(module(x).exp(), expected, atol=1e-6)


def test_exports_to_onnx_with_the_same_output(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    wrapped = tta([{}, {"rotate": 6}, {"scale": 0.92}, {"stroke": -0.3}]).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (torch.zeros(2, 1, 28, 28),),
            str(tmp_path / "tta.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            dynamic_axes={"image": {0: "batch"}},
        )
    x = images(n=5)
    (got,) = ort.InferenceSession(str(tmp_path / "tta.onnx")).run(None, {"image": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), wrapped(x), atol=1e-4)
    # another input size than the configured one: grids made on the fly, same views
    y = images(n=2, size=32)
    with torch.no_grad():
        by_hand = torch.stack([wrapped.net(apply_view(y, **v)).softmax(-1) for v in wrapped.views]).mean(0)
        assert torch.allclose(wrapped(y).exp(), by_hand, atol=1e-6)
