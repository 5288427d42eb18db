"""Checkpoints are data, never code: every entry point reads them through maist.checkpoint, and
every kind of bad file is one line naming it (exit code 2 from the commands)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from maist.checkpoint import check_resumable, load_module, read_checkpoint
from maist.errors import CheckpointError
from maist.run import run as run_config
from tests.helpers import run_python, run_train, tiny_checkpoint


class RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": RunsCode(marker)}}, path)
    return path, marker


def test_a_real_checkpoint_loads_with_the_safe_loader(tiny_ckpt):
    module, ckpt = load_module(tiny_ckpt)
    assert not module.training and ckpt["hyper_parameters"]["classes"][0] == "あ"
    x = torch.zeros(2, 1, 28, 28)
    assert module(x).shape == (2, 12)


def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match=r"evil.ckpt: refused: loading it would run code \(.*system\)"):
        read_checkpoint(path)
    assert not marker.exists()


# Ways a checkpoint's settings tried to make MAIST construct something (each was tried against an
# earlier version, which allowed targets by prefix and rebuilt the model with Hydra): route name →
# (a change to the hyper-parameters that would write the marker file if it ran, the refusal's words).
def _routes(marker: Path) -> dict:
    save = {"_target_": "torch.optim.adam.torch.save", "obj": "pwned", "f": str(marker)}  # an attribute chain
    write = f"${{oc.create:{{_target_: pathlib.Path.write_text, self: {marker}, data: pwned}}}}"
    return {
        "foreign net": (lambda hp: hp.update(net={"_target_": "os.system", "command": f"touch {marker}"}), "os.system"),
        "attribute chain as net": (lambda hp: hp.update(net=save), "torch.optim.adam.torch.save"),
        "attribute chain as augment": (lambda hp: hp.update(augment=save), "torch.optim.adam.torch.save"),
        "attribute chain as optimizer": (lambda hp: hp.update(optimizer=save), "torch.optim.adam.torch.save"),
        "interpolation in the net": (lambda hp: hp["net"].update(hidden=write), "net.hidden holds an interpolation"),
        "interpolation in the preprocessing": (
            lambda hp: hp["preprocess"].update(threshold=write),
            "preprocess.threshold holds an interpolation",
        ),
        "interpolation as the class set": (lambda hp: hp.update(class_set=write), "class_set holds an interpolation"),
        "nested target": (
            lambda hp: hp["net"].update(filters=[{"_target_": "pathlib.Path.touch", "self": str(marker)}, 16]),
            r"net.filters\[0\] asks to construct",
        ),
        "tensor in the settings": (lambda hp: hp.update(seed=torch.zeros(2)), "seed holds a Tensor"),
    }


ROUTES = list(_routes(Path("x")))


def hostile(tmp_path: Path, route: str) -> tuple[Path, Path, str]:
    """A copy of the tiny checkpoint changed by ``route``: (file, marker, expected refusal)."""
    marker = tmp_path / "pwned"
    change, words = _routes(marker)[route]
    ckpt = torch.load(tiny_checkpoint(), weights_only=True)
    change(ckpt["hyper_parameters"])
    path = tmp_path / "hostile.ckpt"
    torch.save(ckpt, path)
    return path, marker, words


@pytest.mark.parametrize("route", ROUTES)
def test_settings_that_would_construct_anything_else_are_refused(tmp_path, route):
    path, marker, words = hostile(tmp_path, route)
    with pytest.raises(CheckpointError, match=f"hostile.ckpt: refused: .*{words}") as info:
        load_module(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def in_process_entry_points(ckpt: Path, tmp_path: Path, run_cfg) -> dict:
    """Each entry point that reads a checkpoint, called in this process (train.py's through
    ``run_cfg``, the fixture): name → a call that returns the one-line error it ends with."""
    from PIL import Image

    from maist import export, predict, serve, visualize

    picture = tmp_path / "a.png"
    Image.new("L", (64, 64), 255).save(picture)

    def command(main, *args):
        def call(capsys):
            assert main([f"ckpt_path={ckpt}", *args]) == 2
            return capsys.readouterr().err.strip().splitlines()[-1]

        return call

    def train(*overrides):
        def call(capsys):
            with pytest.raises(CheckpointError) as info:
                run_config(run_cfg(f"ckpt_path={ckpt}", *overrides))
            return f"error: {info.value}"

        return call

    return {
        "predict": command(predict.main, f"inputs=[{picture}]"),
        "serve": command(serve.main, "port=0"),
        "visualize": command(visualize.main, f"input={picture}", f"out={tmp_path / 'viz'}"),
        "export": command(export.main, f"out={tmp_path / 'm.onnx'}"),
        "evaluate": train("train=false"),
        "resume": train(),
    }


ENTRY_POINTS = ["predict", "serve", "visualize", "export", "evaluate", "resume"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("route", ROUTES)
def test_no_entry_point_constructs_what_a_checkpoint_names(tmp_path, capsys, run_cfg, route, entry):
    path, marker, words = hostile(tmp_path, route)
    last = in_process_entry_points(path, tmp_path, run_cfg)[entry](capsys)
    assert re.match(f"error: {re.escape(str(path))}: refused: .*{words}", last), last
    assert not marker.exists(), f"{entry} ran what the checkpoint named"
    assert not (tmp_path / "cache").exists(), "the data was decoded before the checkpoint was checked"


def test_weights_that_do_not_fit_name_the_tensor(tiny_ckpt, tmp_path, capsys):
    from maist import predict

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["state_dict"]["net.fc2.weight"] = torch.zeros(71, 64)
    path = tmp_path / "shapes.ckpt"
    torch.save(ckpt, path)
    expected = r"net.fc2.weight has shape \(71, 64\) in the file, but the model its settings describe has \(12, 64\)"
    with pytest.raises(CheckpointError, match=expected):
        load_module(path)
    assert predict.main([f"ckpt_path={path}", "inputs=[x.png]"]) == 2
    assert re.search(expected, capsys.readouterr().err)


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name → (file, what its one-line error says)."""
    real = Path(tiny_checkpoint()).read_bytes()
    files = {
        "missing": (tmp_path / "missing.ckpt", None, "no such checkpoint"),
        "empty": (tmp_path / "empty.ckpt", b"", "the file is empty"),
        "truncated": (tmp_path / "truncated.ckpt", real[: len(real) // 2], "truncated or damaged"),
        "text": (tmp_path / "notes.ckpt", b"these are my notes\n", "not a PyTorch checkpoint .* a text file"),
    }
    out = {}
    for name, (path, data, message) in files.items():
        if data is not None:
            path.write_bytes(data)
        out[name] = (path, message)
    bare = tmp_path / "bare.ckpt"
    torch.save(torch.load(tiny_checkpoint(), weights_only=True)["state_dict"], bare)
    out["bare state_dict"] = (bare, "bare weights \\(a state_dict\\)")
    foreign = tmp_path / "foreign.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.zeros(2)},
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"hidden": 128},
        },
        foreign,
    )
    out["another project"] = (foreign, "a Lightning checkpoint of another project")
    return out


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "text", "bare state_dict", "another project"])
def test_every_bad_file_is_one_error_that_names_it(tmp_path, kind):
    path, message = bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError, match=message) as info:
        load_module(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_resuming_needs_the_same_model_and_a_full_training_state(tiny_ckpt):
    ckpt = tiny_ckpt
    net = torch.load(ckpt, weights_only=True)["hyper_parameters"]["net"]
    with pytest.raises(
        CheckpointError,
        match="a checkpoint of maist.models.DeepMnistCNN, but this run configures maist.models.LinearSoftmax",
    ):
        check_resumable(ckpt, {"net": {"_target_": "maist.models.LinearSoftmax"}}, "hiragana71")
    with pytest.raises(CheckpointError, match="saved with another network \\(hidden: 64 saved, 1024 now\\)"):
        check_resumable(ckpt, {"net": {**net, "hidden": 1024}}, "hiragana71")
    with pytest.raises(CheckpointError, match="class set 'hiragana71', this run uses 'hiragana75'"):
        check_resumable(ckpt, {"net": net}, "hiragana75")
    with pytest.raises(CheckpointError, match="holds weights only"):
        check_resumable(ckpt, {"net": net}, "hiragana71")


def entry_points(ckpt: Path, tmp_path: Path) -> dict[str, list[str]]:
    picture = tmp_path / "a.png"
    from PIL import Image

    Image.new("L", (64, 64), 255).save(picture)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    return {
        "predict": ["-m", "maist.predict", f"ckpt_path={ckpt}", f"inputs=[{picture}]"],
        "serve": ["-m", "maist.serve", f"ckpt_path={ckpt}", "port=0"],
        "visualize": ["-m", "maist.visualize", f"ckpt_path={ckpt}", f"input={picture}", f"out={tmp_path / 'viz'}"],
        "export": ["-m", "maist.export", f"ckpt_path={ckpt}", f"out={tmp_path / 'm.onnx'}"],
        "evaluate": ["train.py", "train=false", f"ckpt_path={ckpt}", cache, f"hydra.run.dir={tmp_path / 'eval'}"],
        "resume": ["train.py", f"ckpt_path={ckpt}", cache, f"hydra.run.dir={tmp_path / 'resume'}"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["predict", "serve", "visualize", "export", "evaluate", "resume"])
def test_no_entry_point_runs_a_malicious_checkpoint(malicious, tmp_path, entry):
    path, marker = malicious
    proc = run_python(*entry_points(path, tmp_path)[entry])
    assert not marker.exists(), f"{entry} ran the checkpoint's code"
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: refused") and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists(), "the data was decoded before the checkpoint was checked"


@pytest.mark.slow
def test_resuming_another_model_fails_before_the_data_is_decoded(tiny_ckpt, tmp_path):
    proc = run_train(
        "model=linear",
        f"ckpt_path={tiny_ckpt}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2
    assert "but this run configures maist.models.LinearSoftmax" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "cache").exists()


def test_last_checkpoint_every_n_steps_saves_at_its_multiples_and_at_the_end(tmp_path):
    """A run without validation (experiment=best_accuracy) still keeps its last.ckpt current: saved
    at steps 4 and 8 of 10, then at the end, each step once; off by default."""
    from types import SimpleNamespace

    from maist.callbacks.checkpoints import LastCheckpoint

    def fit(callback: LastCheckpoint, steps: int) -> list[int]:
        saved = []
        trainer = SimpleNamespace(sanity_checking=False, global_step=0)
        trainer.save_checkpoint = lambda path, **kwargs: saved.append(trainer.global_step)
        for step in range(1, steps + 1):
            trainer.global_step = step
            callback.on_train_batch_end(trainer, None, None, None, step - 1)
        callback.on_train_end(trainer, None)
        return saved

    assert fit(LastCheckpoint(str(tmp_path), every_n_steps=4), 10) == [4, 8, 10]
    assert fit(LastCheckpoint(str(tmp_path), every_n_steps=4), 8) == [4, 8]  # the end is step 8: once
    assert fit(LastCheckpoint(str(tmp_path)), 10) == [10]
    for bad in (0, -5, True):
        with pytest.raises(ValueError, match="every_n_steps"):
            LastCheckpoint(str(tmp_path), every_n_steps=bad)


def test_a_stale_temporary_left_by_a_killed_write_is_deleted_when_the_run_starts(tmp_path):
    from maist.callbacks.checkpoints import remove_stale_temporaries

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    stale = [ckpts / ".last.ckpt.k3j2.tmp", tmp_path / ".metrics.json.x9.tmp"]
    kept = [ckpts / "last.ckpt", ckpts / "best.ckpt", tmp_path / "notes.tmp", ckpts / ".hidden"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temporaries(tmp_path / "absent") == []
