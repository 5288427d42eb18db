"""Networks: each maps (N, 1, S, S) images to class logits."""

from maist.models.cnn import DeepMnistCNN
from maist.models.linear import LinearSoftmax
from maist.models.modern import ModernCNN, ModernEnsemble
from maist.models.tta import TestTimeAugmented

__all__ = ["DeepMnistCNN", "LinearSoftmax", "ModernCNN", "ModernEnsemble", "TestTimeAugmented"]
