"""What can be done with a model, decided once and read everywhere.

A model loaded from an ONNX file whose graph has ops with no torch equivalent runs those nodes in
ONNX Runtime (``OnnxModule.ort_ops``): no channel and no gradient can be followed through them, so
structured methods, batch-norm recalibration and fine-tuning are off, and the model is exported as
the user's own graph with the pruned weights written back. A model DepGraph cannot trace has no
structured methods either. :func:`ort_ops` is the one probe of the first; ``Subject.capabilities``
holds both answers with their reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["Capabilities", "ort_ops"]


def ort_ops(model: nn.Module) -> tuple[str, ...]:
    """The ops of ``model`` that run in ONNX Runtime as they are (empty for a torch model)."""
    return tuple(getattr(model, "ort_ops", ()))


@dataclass(frozen=True)
class Capabilities:
    """``""`` where a capability is available, else the reason it is not (shown to the user)."""

    ort_ops: tuple[str, ...] = ()
    structured_off: str = ""  # why output channels cannot be removed
    training_off: str = ""  # why batch-norm recalibration and fine-tuning cannot run

    @property
    def own_graph(self) -> bool:
        """Exported as the user's own ONNX graph with the pruned weights written back."""
        return bool(self.ort_ops)

    @property
    def structured(self) -> bool:
        return not self.structured_off

    @property
    def trainable(self) -> bool:
        return not self.training_off

    def method_off(self, structured: bool) -> str:
        """Why a (structured or not) method cannot run on this model ("" when it can)."""
        return self.structured_off if structured else ""

    @classmethod
    def of(cls, model: nn.Module, structured_error: str = "") -> Capabilities:
        """The capabilities of ``model``; ``structured_error`` is the inventory's DepGraph
        verdict."""
        ops = ort_ops(model)
        training = ""
        if ops:
            training = (
                f"the graph runs {list(ops)} in ONNX Runtime: no gradient flows through them and"
                " only zeroed weights can be written back into it, so recalibration and"
                " fine-tuning are off"
            )
        return cls(ort_ops=ops, structured_off=structured_error, training_off=training)
