"""minimlp: the feed-forward-only vision transformer, with every backward pass by hand.

import minimlp
model = minimlp.create_model("ff_tiny", num_classes=10, img_size=32, patch_size=8)
logits, cache = model.forward(x, train=True)     # x: (B, C, H, W)
dx = model.backward(dlogits, cache)              # accumulates into model.grads
"""

from minimlp.backend import get_backend
from minimlp.models import Model, create_model, list_models

__version__ = "0.1.0"
__all__ = ["Model", "create_model", "get_backend", "list_models", "__version__"]
