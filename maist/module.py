"""One LightningModule for every model: loss, metrics, optimizer.

The network, optimizer, scheduler and augmentation arrive as settings (dicts with a
``_target_``), built by :mod:`maist.registry` (never by Hydra: the same settings come back from
checkpoints), and are saved in the checkpoint with the class list, the preprocessing and the
training images' ink-to-frame ratio and stroke width (how prediction frames a user's picture), so
:func:`maist.checkpoint.load_module` rebuilds a model from the file alone.
"""

from __future__ import annotations

import inspect
import logging
import math

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import Container, OmegaConf
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

from maist import checks, registry
from maist.data.kana import CLASS_SET_NAMES, ascii_name, voiced_parts

log = logging.getLogger(__name__)

REDUCTIONS = ("sum", "mean")
PER_CLASS = "test_per_class"  # the section of per-class test accuracy in the trackers
# Up to this many classes, one tracker scalar per class (and a confusion matrix) stay readable;
# beyond (kanji), the test analysis shows the most confused pairs and the worst classes instead.
READABLE_CLASSES = 100


MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 over the parts): nearby steps, seeds and
    ranks give unrelated streams."""
    x = 0
    for part in parts:
        x = (x ^ (int(part) & MASK64)) + 0x9E3779B97F4A7C15 & MASK64
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
        x ^= x >> 31
    return x >> 1


def per_class_name(label: int, char: str) -> str:
    """The tracker name of one class's test accuracy: ``test_per_class/60_ya`` (ASCII, which every
    tracker accepts; the label keeps it unique)."""
    return f"{PER_CLASS}/{label:02d}_{ascii_name(char)}"


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, Container) else cfg


class MaistModule(L.LightningModule):
    """Training, evaluation and the optimizer of one network (``model=cnn|linear|modern``).

    Args:
        net: Hydra config of the network (``_target_`` a class in :mod:`maist.models`).
        optimizer: Hydra config of the optimizer (``_target_`` e.g. ``torch.optim.Adam``, ``lr``).
        scheduler: optional Hydra config of a torch learning-rate scheduler; ``interval`` (step or
            epoch) says when it steps.
        augment: optional Hydra config of a batch augmentation (:class:`maist.augment.BatchAffine`).
        loss_reduction: ``sum`` over the batch (the article's) or ``mean``.
        label_smoothing: cross-entropy label smoothing.
        voiced_weight: the training loss weight of the voiced forms' images (が … ぽ: a kana with a
            dakuten or handakuten), the other classes' being 1 (1: every class alike).
        classes: the characters, in label order (saved for prediction).
        class_set: the name of the class set the labels come from.
        preprocess: the training :class:`~maist.data.preprocess.Preprocess` settings (saved, so
            prediction applies the same).
        ink_ratio: how much of the frame the training images' ink fills (frames user pictures).
        stroke_width: the training images' median stroke width at the input size, in pixels
            (prediction makes user pictures' strokes as wide).
        seed: the run's seed; each training step reseeds from (seed, step, rank).
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        augment: dict | None = None,
        loss_reduction: str = "sum",
        label_smoothing: float = 0.0,
        voiced_weight: float = 1.0,
        classes: list[str] | None = None,
        class_set: str = "hiragana71",
        preprocess: dict | None = None,
        ink_ratio: float | None = None,
        stroke_width: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        # Saved in the checkpoint; trackers get the run's flat settings at the end (maist.tracking).
        self.save_hyperparameters(
            {k: _plain(v) for k, v in locals().items() if k not in ("self", "__class__")}, logger=False
        )
        hp = self.hparams
        checks.choice("model.loss_reduction", loss_reduction, REDUCTIONS)
        checks.fraction("model.label_smoothing", label_smoothing)
        checks.positive("model.voiced_weight", voiced_weight)
        checks.choice("data.class_set", class_set, CLASS_SET_NAMES)
        checks.whole("seed", seed)
        if ink_ratio is not None:
            checks.probability("ink_ratio", ink_ratio)
        if stroke_width is not None:
            checks.number("stroke_width", stroke_width, 0.0, 100.0)
        registry.check_spec(hp.optimizer, "optimizer", "model.optimizer")
        checks.positive("model.optimizer.lr", hp.optimizer.get("lr", 1e-3))
        checks.number("model.optimizer.weight_decay", hp.optimizer.get("weight_decay", 0.0), 0.0)
        if hp.scheduler:
            registry.check_spec(hp.scheduler, "scheduler", "model.scheduler")
            checks.choice("model.scheduler.interval", hp.scheduler.get("interval", "step"), ("step", "epoch"))
        self.classes = [str(c) for c in classes or []]
        weights = [voiced_weight if voiced_parts(c) else 1.0 for c in self.classes]
        # the training loss's class weights (None: all 1); a buffer outside the state dict, made from the hparams
        self.register_buffer(
            "class_weight", torch.tensor(weights) if voiced_weight != 1.0 and self.classes else None, persistent=False
        )
        self.net = registry.build(hp.net, "net", "model.net")
        self.augment = registry.build(hp.augment, "augment", "model.augment") if augment else None
        n = hp.net.get("num_classes", len(self.classes))
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.test_acc = MulticlassAccuracy(n, average="micro")
        self.test_acc_top5 = MulticlassAccuracy(n, top_k=min(5, n), average="micro")
        self.test_class_stats = MulticlassStatScores(n, average=None)  # per class: tp, fp, tn, fn, support
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        # A step whose loss was not finite on some rank (its update skipped): a Python int (the
        # latest), or, where a fused optimizer skips on the device (nonfinite_on_device), a device
        # tensor (the first; -1: none).
        self._nonfinite: int | torch.Tensor | None = None
        self.nonfinite_on_device = False
        self._found_inf: torch.Tensor | None = None  # on that path, the coming update's decision: 1.0 = skip
        self._had_no_state = False  # whether the optimizer had no state before the last update

    def forward(self, x):
        return self.net(x)

    def record_training_images(self, ink_ratio: float, stroke_width: float) -> None:
        """Save what the training images measure (known once the data is decoded, after this module
        is built): prediction frames users' pictures and matches their strokes by them."""
        self.hparams.ink_ratio = checks.probability("ink_ratio", ink_ratio)
        self.hparams.stroke_width = checks.number("stroke_width", stroke_width, 0.0, 100.0)

    def __setattr__(self, name, value):
        # Lightning sets _current_fx_name around every hook, ~44 times a training step, and
        # nn.Module.__setattr__ costs microseconds each for what is a plain attribute.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def step_seed(self, step: int) -> int:
        """The seed of training step ``step`` on this process: a function of (seed, step, rank)."""
        return mix_seed(self.hparams.seed, step, self.global_rank)

    def on_train_batch_start(self, batch, batch_idx):
        # Dropout masks and augmentation draw from torch's generator, seeded afresh each step: a
        # resumed run repeats an uninterrupted one exactly, and every rank draws its own. Only the
        # generator in use is seeded (torch.manual_seed would queue one for every device type).
        seed = self.step_seed(self.global_step)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        torch.default_generator.manual_seed(seed)

    def loss(self, logits, y):
        return F.cross_entropy(
            logits,
            y,
            weight=self.class_weight,
            reduction=self.hparams.loss_reduction,
            label_smoothing=self.hparams.label_smoothing,
        )

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        logits = self(x)
        loss = self.loss(logits, y)
        if self.nonfinite_on_device:
            self._flag_nonfinite(loss)  # the fused optimizer skips the update if so, without a host read
        elif not self._all_finite(loss):
            # Every rank skips this update together: a zero loss gives zero gradients (so the
            # gradient all-reduce still runs on every rank), and on_before_optimizer_step drops them.
            self._nonfinite = self.global_step
            return sum((p * 0).sum() for p in self.parameters() if p.requires_grad)
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if self.hparams.loss_reduction == "sum" and world_size > 1:
            # Each rank sums over its slice of the global batch and DDP averages the gradients:
            # scaling by the world size makes the update the sum over the whole batch.
            loss = loss * world_size
        if self._logging_step():
            acc = (logits.argmax(1) == y).float().mean()
            if self.hparams.loss_reduction == "sum":  # the article's objective; train/loss is per image
                self.log("train/loss_sum", loss, on_step=True, on_epoch=False, sync_dist=True)
                mean = loss.detach() / (len(y) * world_size)
            else:
                mean = loss.detach()
            # per image, like val/loss and test/loss: the three compare on one scale
            self.log("train/loss", mean, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
            self.log("train/acc", acc, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
            if hasattr(self.net, "keep_prob"):
                self.log("train/keep_prob", float(self.net.keep_prob), on_step=True, on_epoch=False)
        return loss

    # Lightning reads training_step's signature before every step (inspect.getfullargspec, ~10 µs
    # on a CPU); a precomputed __signature__ makes that a lookup.
    training_step.__signature__ = inspect.signature(training_step)

    def on_before_optimizer_step(self, optimizer):
        if self.nonfinite_on_device:
            # The fused kernels leave every weight and their own state as they are where this is 1
            # (GradScaler's protocol); it covers every micro-batch of the update.
            optimizer.found_inf, self._found_inf = self._found_inf, None
            self._had_no_state = not optimizer.state
        elif self._nonfinite == self.global_step:  # a skipped step: the optimizer leaves every
            for p in self.parameters():  # weight and its own state as they are
                p.grad = None

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # A skipped update that made the optimizer's state leaves it as made (fused SGD's momentum
        # buffers come from empty_like): read that one decision, and if it was a skip, drop the state.
        if self._had_no_state:
            self._had_no_state = False
            made = [o for o in self.trainer.optimizers if o.state]
            if made and any(bool(o.found_inf) for o in made):
                for o in made:
                    o.state.clear()

    def on_train_start(self):
        # A fused optimizer (the default on a GPU) takes the skip decision as a device tensor, so a
        # step needs no host synchronisation; the divergence guard reads it on logging steps only.
        # (Its param_groups, not its defaults: a resumed run's come from the checkpoint.)
        groups = [g for o in self.trainer.optimizers for g in o.param_groups]
        self.nonfinite_on_device = bool(groups) and all(g.get("fused") for g in groups)
        self._found_inf, self._had_no_state = None, False
        if self.nonfinite_on_device and not isinstance(self._nonfinite, torch.Tensor):
            step = -1 if self._nonfinite is None else self._nonfinite
            self._nonfinite = torch.tensor(step, device=self.device)

    @property
    def nonfinite_step(self) -> int | None:
        """A training step whose loss was not finite on some rank (its update skipped on every
        rank), or None: the latest, or on the device path the first (read later, on logging steps).
        On the device path, reading it waits for the device."""
        if isinstance(self._nonfinite, torch.Tensor):
            step = int(self._nonfinite)
            return None if step < 0 else step
        return self._nonfinite

    def _flag_nonfinite(self, loss: torch.Tensor) -> None:
        """The coming update's skip decision, on the device and the same on every rank: 1.0 where
        the loss of this or an earlier micro-batch of the update is not finite on some rank (one
        all-reduce, no host read); the first such step is kept."""
        bad = torch.isfinite(loss.detach()).logical_not().float()
        if self._trainer is not None and self.trainer.world_size > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        self._found_inf = bad if self._found_inf is None else torch.maximum(self._found_inf, bad)
        first = self._nonfinite
        self._nonfinite = torch.where((first < 0) & (bad > 0), self.global_step, first)

    def _fused(self) -> dict:
        """``{"fused": True}`` on a GPU (one kernel a step, and a skip decided on the device), unless
        the optimizer's settings choose an implementation (``model.optimizer.fused=false``) or the
        run trains in 16-mixed, whose GradScaler takes that decision itself; else ``{}``."""
        chosen = {"fused", "foreach", "differentiable", "capturable"} & set(self.hparams.optimizer)
        precision = str(getattr(self._trainer, "precision", ""))
        return {"fused": True} if self.device.type == "cuda" and not chosen and precision != "16-mixed" else {}

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank: one decision that all ranks take together (a
        rank that skipped its step alone would leave the others waiting in the gradient all-reduce)."""
        finite = math.isfinite(loss.item())  # a Python float: a twentieth of bool(torch.isfinite(loss))
        if self._trainer is None or self.trainer.world_size == 1:
            return finite
        return bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's logs: the scalars are computed on those steps only,
        so a step costs no more than its forward, backward and update."""
        if self._trainer is None:
            return True
        return bool(getattr(self.trainer._logger_connector, "should_update_logs", True))

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch, loss_metric, acc_metric):
        x, y = batch
        logits = self(x)
        # Per-example mean, so val/test losses compare across batch sizes and reductions.
        loss_metric.update(F.cross_entropy(logits, y, reduction="mean"), weight=len(y))
        acc_metric.update(logits, y)
        return logits

    def on_validation_epoch_start(self):
        self.val_loss.reset()
        self.val_acc.reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self):
        acc = self.val_acc.compute()
        self.val_acc_best(acc)
        # The metrics are already gathered from every rank (torchmetrics syncs in compute()).
        self.log("val/loss", self.val_loss.compute(), sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx):
        logits = self._eval_step(batch, self.test_loss, self.test_acc)
        self.test_acc_top5.update(logits, batch[1])
        self.test_class_stats.update(logits, batch[1])

    def on_test_epoch_end(self):
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self.log("test/acc", self.test_acc.compute(), sync_dist=True)
        self.log("test/acc_top5", self.test_acc_top5.compute(), sync_dist=True)
        # Accuracy of each class the test set holds (a class without images has none); one
        # scalar each only while that many stay readable (kanji: see the test analysis instead).
        stats = self.test_class_stats.compute()
        correct, support = stats[:, 0].tolist(), stats[:, 4].tolist()
        names = self.classes if len(self.classes) == len(support) else [str(k) for k in range(len(support))]
        self.per_class_accuracy = {c: t / s for c, t, s in zip(names, correct, support) if s}
        if len(names) <= READABLE_CLASSES:  # their own section, one scalar a class
            for label, c in enumerate(names):
                if c in self.per_class_accuracy:
                    self.log(per_class_name(label, c), self.per_class_accuracy[c], sync_dist=True)

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        optimizer = registry.build(self.hparams.optimizer, "optimizer", params=self.parameters(), **self._fused())
        if not self.hparams.scheduler:
            return optimizer
        interval = self.hparams.scheduler.get("interval", "step")
        scheduler = registry.build(self.hparams.scheduler, "scheduler", optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
