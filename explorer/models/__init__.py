"""Built-in models (the zoo) and loaders for the user's own."""

from explorer.models.loaders import load_model
from explorer.models.zoo import ZOO, ZooEntry

__all__ = ["ZOO", "ZooEntry", "load_model"]
