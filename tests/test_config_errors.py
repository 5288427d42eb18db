"""A value that cannot work fails before any data is decoded, as one line naming the setting."""

from __future__ import annotations

import pytest

from maist.errors import ConfigError, user_error
from maist.run import run
from tests.helpers import run_train


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=abc", "data.batch_size='abc': must be a whole number ≥ 1"),
        ("data.batch_size=0", "data.batch_size=0: must be a whole number ≥ 1"),
        ("data.eval_batch_size=-5", "data.eval_batch_size=-5"),
        ("data.val_fraction=0.85", "must leave some data for training"),
        ("data.split_by=writers", "data.split_by='writers': must be one of writer, random"),
        ("data.class_set=hiragana46", "unknown class set 'hiragana46'"),
        ("torch_threads=abc", "torch_threads='abc': must be a whole number ≥ 1"),
        ("torch_threads=0", "torch_threads=0"),
        ("model.optimizer.lr=-1", "model.optimizer.lr=-1: must be a finite number > 0"),
        (
            "schedule=stepped schedule.lr.values={0:1e-3,1000:-1e-4}",
            "schedule lr: -0.0001 at step 1000 must be a finite number > 0",
        ),
        ("schedule=stepped schedule.lr.values={0:inf}", "schedule lr: inf at step 0 must be a finite number > 0"),
        ("schedule=stepped_dropout schedule.keep_prob.values={0:1.5}", "schedule keep_prob: 1.5 at step 0 must be"),
        ("test_ckpt=best_one", "test_ckpt='best_one': must be one of best, last"),
        # data
        ("data.image_size=2000", "data.image_size=2000: must be a whole number from 4 to 256"),
        ("data.image_size=0.5", "data.image_size=0.5: must be a whole number"),
        ("data.sampler=shuffle", "data.sampler='shuffle': must be one of with_replacement, epoch"),
        ("data.test_fraction=-0.1", "data.test_fraction=-0.1: must be a number in [0, 1)"),
        ("data.num_workers=-1", "data.num_workers=-1: must be a whole number ≥ 0"),
        ("seed=-3", "seed=-3: must be a whole number ≥ 0"),
        # preprocessing
        ("data.preprocess.contrast=equalize", "data.preprocess.contrast='equalize': must be one of none, stretch"),
        ("data.preprocess.margin=-1", "data.preprocess.margin=-1: must be a number in [0, 1]"),
        ("data.preprocess.threshold=1.5", "data.preprocess.threshold=1.5: must be a number in [0, 1)"),
        ("data.preprocess.despeckle=9", "data.preprocess.despeckle=9: must be a whole number from 0 to 8"),
        ("data.preprocess.crop=maybe", "data.preprocess.crop='maybe': must be true or false"),
        ("data.preprocess.crop_mass=0.7", "data.preprocess.crop_mass=0.7: must be a number in [0, 0.5)"),
        ("data.preprocess.crop_border=0.3", "data.preprocess.crop_border=0.3: must be a number in [0, 0.25]"),
        # model and net
        ("model.net.keep_prob=0", "model.net.keep_prob=0: must be a number in (0, 1]"),
        ("model.net.keep_prob=1.5", "model.net.keep_prob=1.5: must be a number in (0, 1]"),
        ("model.net.keep_prob=-0.5", "model.net.keep_prob=-0.5"),
        ("model.net.pool=median", "model.net.pool='median': must be one of max, avg"),
        ("model.net.kernel_size=4", "model.net.kernel_size=4: must be odd"),
        ("model.net.hidden=0", "model.net.hidden=0: must be a whole number ≥ 1"),
        ("model.net.init=xavier", "model.net.init='xavier': must be one of tensorflow, pytorch"),
        ("model.net.filters=[32]", "model.net.filters=[32]: must be a list of 2 whole numbers"),
        ("model.net._target_=os.system", "model.net._target_='os.system': MAIST builds only"),
        ("model.label_smoothing=2", "model.label_smoothing=2: must be a number in [0, 1)"),
        ("model.loss_reduction=max", "model.loss_reduction='max': must be one of sum, mean"),
        ("model.optimizer._target_=torch.optim.LBFGS", "model.optimizer._target_='torch.optim.LBFGS'"),
        ("model=modern model.optimizer.weight_decay=-1", "model.optimizer.weight_decay=-1"),
        ("model=modern model.net.channels=[]", "model.net.channels=[]: must be a list of whole numbers ≥ 1"),
        ("model=modern model.net.dropout=1", "model.net.dropout=1: must be a number in [0, 1)"),
        ("model=modern model.scheduler.interval=batch", "model.scheduler.interval='batch': must be one of step, epoch"),
        # augmentation
        ("model=modern model.augment.rotate=-5", "model.augment.rotate=-5: must be a number in [0, 180]"),
        (
            "model=modern model.augment.scale=[1.2,0.8]",
            "model.augment.scale=[1.2, 0.8]: must be a pair [lo, hi] with lo ≤ hi",
        ),
        ("model=modern +model.augment.p=2", "model.augment.p=2: must be a number in [0, 1]"),
        ("model=modern model.augment.contrast=0", "model.augment.contrast=0: must be a number in (0, 1]"),
        ("experiment=best model.net.views=[{shear:3}]", "model.net.views: {'shear': 3} is not a view"),
        ("experiment=best model.net.inner=Linear", "model.net.inner='Linear': must be one of DeepMnistCNN"),
        # schedules
        (
            "schedule=stepped ~schedule.lr.values +schedule.lr.values={0:1e-3,0.5:1e-4}",
            "schedule lr step=0.5: must be a whole number ≥ 0 (a global step)",
        ),
        (
            "schedule=stepped ~schedule.lr.values +schedule.lr.values={0:1e-3,true:1e-4}",
            "schedule lr step=True: must be a whole number ≥ 0",
        ),
        ("schedule=stepped_dropout model=modern", "schedule keep_prob: ModernCNN has no keep_prob to schedule"),
        # callbacks
        ("callbacks.last_checkpoint.every_n_steps=0", "callbacks.last_checkpoint.every_n_steps=0: must be a whole"),
        ("+callbacks.feature_maps.split=dev", "callbacks.feature_maps.split='dev': must be one of train, val, test"),
        ("callbacks.divergence_guard.collapse_fraction=2", "callbacks.divergence_guard.collapse_fraction=2"),
        # the trainer keys MAIST reads
        ("trainer.val_check_interval=0", "trainer.val_check_interval=0: must be a whole number ≥ 1 (steps)"),
        ("trainer.max_steps=0", "trainer.max_steps=0: must be a whole number ≥ 1 (the steps to train"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0: must be a whole number ≥ 1"),
    ],
)
def test_bad_values_fail_before_the_data_is_decoded(tmp_path, run_cfg, override, message):
    cfg = run_cfg(*override.split(" "))
    with pytest.raises(Exception) as info:
        run(cfg)
    err = user_error(info.value)  # what train.py prints (Hydra wraps errors raised in instantiate)
    assert isinstance(err, ConfigError) and message in str(err), str(info.value)
    assert "\n" not in str(err)
    assert not (tmp_path / "cache").exists(), "data was decoded before the value was checked"


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, line",
    [
        ("data.batch_size=abc", "error: data.batch_size='abc': must be a whole number ≥ 1"),
        (
            "data.preprocess.contrast=equalize",
            "error: data.preprocess.contrast='equalize': must be one of none, stretch",
        ),
        ("model.net.pool=median", "error: model.net.pool='median': must be one of max, avg"),
    ],
)
def test_train_py_prints_one_line_and_exits_2(tmp_path, override, line):
    proc = run_train(override, f"hydra.run.dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "c").exists()
