"""Networks: each maps (N, 1, S, S) images to class logits."""

from maist.models.cnn import DeepMnistCNN
from maist.models.linear import LinearSoftmax
from maist.models.modern import ModernCNN, ModernEnsemble
from maist.models.tta import TestTimeAugmented

# The networks by name (configs and checkpoints name them maist.models.<name>: maist.registry).
NETS = {cls.__name__: cls for cls in (DeepMnistCNN, LinearSoftmax, ModernCNN, ModernEnsemble, TestTimeAugmented)}

__all__ = ["NETS", "DeepMnistCNN", "LinearSoftmax", "ModernCNN", "ModernEnsemble", "TestTimeAugmented"]
