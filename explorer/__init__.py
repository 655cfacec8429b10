"""Pruning Explorer: prune a model layer by layer and measure the real pruned artifact.

This package never imports streamlit; the app (app.py, pages/, ui/) is a thin view on it.
"""

from explorer.errors import ExplorerError
from explorer.methods import available_methods, get_method
from explorer.plan import PruningPlan
from explorer.prune import apply_plan
from explorer.subject import DEFAULT_MODEL, Subject

__all__ = [
    "DEFAULT_MODEL",
    "ExplorerError",
    "PruningPlan",
    "Subject",
    "apply_plan",
    "available_methods",
    "get_method",
]
__version__ = "0.1.0"
