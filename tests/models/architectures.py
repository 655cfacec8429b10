"""Every common architecture, as users bring them: Hugging Face ``transformers`` models built from
configs (offline; never ``from_pretrained``), and replicas of torchvision families that
``transformers`` lacks (``tests/models/families.py``).

Each name below is a zero-argument ``PATH.py:FUNC`` entrypoint returning the model in eval mode,
small (32x32 images, 2-4 layers, hidden 32-64, 16 tokens) for the test matrix;
``build(name, real=True)`` gives the realistic size (224 px, 128 tokens) for
``benchmarks/architectures.py``. Weights are seeded random; batch-norm statistics are set from a
few batches of random data in train mode, so they are not the initial zeros and ones (a model with
trained statistics exports differently: the TorchScript exporter folds them into the convolutions).
Hugging Face models are returned as they are: they take ``pixel_values`` or ``input_ids`` and
``attention_mask`` and return a ``ModelOutput`` holding ``logits``.

``make_data(name, n, real)`` gives the inputs (``x``, or ``input_ids`` and ``attention_mask``)
and labels ``y``, as the ``.npz`` a user would write.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSES = 4
VOCAB = 128


def _families():  # noqa: ANN202
    """tests/models/families.py as a module (tests/ is not a package)."""
    name = "_explorer_test_families"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("families.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass(frozen=True)
class Arch:
    """One architecture: how to build it (small or real), and what it takes."""

    name: str
    kind: (
        str  # "image" (x: float32 N x 3 x H x W) or "text" (input_ids, attention_mask: int64 N x T)
    )
    build: Callable[[bool], nn.Module]
    source: str  # "transformers" or "torchvision replica"
    what: str  # the structure it exercises

    def size(self, real: bool) -> int:
        """Image side (px) or sequence length (tokens)."""
        if self.kind == "image":
            return 224 if real else 32
        return 128 if real else 16


def _hf(
    config_name: str, model_name: str, small: dict, real: dict | None = None
) -> Callable[[bool], nn.Module]:
    def build(is_real: bool) -> nn.Module:
        import transformers

        kwargs = dict(real if is_real and real is not None else ({} if is_real else small))
        kwargs.setdefault("num_labels", CLASSES)
        config = getattr(transformers, config_name)(**kwargs)
        return getattr(transformers, model_name)(config)

    return build


def _family(name: str) -> Callable[[bool], nn.Module]:
    return lambda real: _families().build_family(name, CLASSES, real)


_TEXT_SMALL = {"vocab_size": VOCAB, "max_position_embeddings": 64, "pad_token_id": 0}
_VIT_SMALL = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch(
            "resnet",
            "image",
            _hf(
                "ResNetConfig",
                "ResNetForImageClassification",
                {
                    "embedding_size": 16,
                    "hidden_sizes": [16, 32, 48],
                    "depths": [1, 1, 1],
                    "layer_type": "bottleneck",
                },
            ),
            "transformers",
            "residual bottlenecks (ResNet-50)",
        ),
        Arch(
            "mobilenet_v2",
            "image",
            _hf(
                "MobileNetV2Config",
                "MobileNetV2ForImageClassification",
                {"depth_multiplier": 0.35, "image_size": 32},
            ),
            "transformers",
            "inverted residuals, depthwise convs, TF 'same' padding",
        ),
        Arch(
            "efficientnet",
            "image",
            _hf(
                "EfficientNetConfig",
                "EfficientNetForImageClassification",
                {
                    "width_coefficient": 0.25,
                    "depth_coefficient": 0.25,
                    "image_size": 32,
                    "hidden_dim": 320,
                    "in_channels": [32, 16, 24, 40],
                    "out_channels": [16, 24, 40, 80],
                    "kernel_sizes": [3, 3, 5, 3],
                    "strides": [1, 2, 2, 2],
                    "num_block_repeats": [1, 2, 2, 3],
                    "expand_ratios": [1, 6, 6, 6],
                },
                {
                    "width_coefficient": 1.0,
                    "depth_coefficient": 1.0,
                    "image_size": 224,
                    "hidden_dim": 1280,
                    "dropout_rate": 0.2,
                },
            ),
            "transformers",
            "squeeze-excitation, swish, depthwise convs (EfficientNet-B0)",
        ),
        Arch(
            "convnext",
            "image",
            _hf(
                "ConvNextConfig",
                "ConvNextForImageClassification",
                {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2},
            ),
            "transformers",
            "LayerNorm, depthwise 7x7, layer scale (ConvNeXt-T)",
        ),
        Arch(
            "regnet",
            "image",
            _hf(
                "RegNetConfig",
                "RegNetForImageClassification",
                {
                    "embedding_size": 16,
                    "hidden_sizes": [16, 32],
                    "depths": [1, 1],
                    "groups_width": 8,
                },
            ),
            "transformers",
            "grouped convs, squeeze-excitation (RegNetY)",
        ),
        Arch(
            "vit",
            "image",
            _hf("ViTConfig", "ViTForImageClassification", _VIT_SMALL),
            "transformers",
            "patch embedding, attention (ViT-B/16)",
        ),
        Arch(
            "deit",
            "image",
            _hf("DeiTConfig", "DeiTForImageClassification", _VIT_SMALL),
            "transformers",
            "patch embedding, attention (DeiT-B)",
        ),
        Arch(
            "swin",
            "image",
            _hf(
                "SwinConfig",
                "SwinForImageClassification",
                {
                    "image_size": 32,
                    "patch_size": 2,
                    "embed_dim": 16,
                    # Two blocks a stage: the second shifts its windows (torch.roll), as in every
                    # Swin; through it DepGraph's grouping never ended before explorer.groups.
                    "depths": [2, 2],
                    "num_heads": [2, 4],
                    "window_size": 4,
                },
            ),
            "transformers",
            "windowed and shifted-window attention, relative position bias, patch merging (Swin-T)",
        ),
        Arch(
            "mobilevit",
            "image",
            _hf(
                "MobileViTConfig",
                "MobileViTForImageClassification",
                {
                    "image_size": 32,
                    "hidden_sizes": [32, 48, 64],
                    "neck_hidden_sizes": [8, 16, 24, 32, 40, 48, 96],
                },
                {"image_size": 224},
            ),
            "transformers",
            "convolutions and attention on unfolded patches (MobileViT-S)",
        ),
        Arch(
            "bert",
            "text",
            _hf(
                "BertConfig",
                "BertForSequenceClassification",
                {
                    **_TEXT_SMALL,
                    "hidden_size": 32,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "intermediate_size": 64,
                },
            ),
            "transformers",
            "token embeddings, attention mask, pooler (BERT-base)",
        ),
        Arch(
            "distilbert",
            "text",
            _hf(
                "DistilBertConfig",
                "DistilBertForSequenceClassification",
                {**_TEXT_SMALL, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64},
            ),
            "transformers",
            "attention (DistilBERT)",
        ),
        Arch(
            "gpt2",
            "text",
            _hf(
                "GPT2Config",
                "GPT2ForSequenceClassification",
                {
                    **_TEXT_SMALL,
                    "n_positions": 64,
                    "n_embd": 32,
                    "n_layer": 2,
                    "n_head": 4,
                    "bos_token_id": 1,
                    "eos_token_id": 2,
                },
                {"pad_token_id": 0},
            ),
            "transformers",
            "causal attention, transformers' Conv1D layers (GPT-2 small)",
        ),
        Arch(
            "llama",
            "text",
            _hf(
                "LlamaConfig",
                "LlamaForSequenceClassification",
                {
                    **_TEXT_SMALL,
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                },
                {
                    "vocab_size": 32000,
                    "hidden_size": 768,
                    "intermediate_size": 2048,
                    "num_hidden_layers": 12,
                    "num_attention_heads": 12,
                    "num_key_value_heads": 4,
                    "max_position_embeddings": 512,
                    "pad_token_id": 0,
                },
            ),
            "transformers",
            "RMSNorm, rotary embeddings, grouped-query attention, SwiGLU (Llama, 12 layers of 768)",
        ),
        Arch(
            "squeezenet",
            "image",
            _family("squeezenet"),
            "torchvision replica",
            "fire modules (SqueezeNet 1.1)",
        ),
        Arch(
            "densenet",
            "image",
            _family("densenet"),
            "torchvision replica",
            "dense concatenation (DenseNet-121)",
        ),
        Arch(
            "shufflenet_v2",
            "image",
            _family("shufflenet_v2"),
            "torchvision replica",
            "channel split and shuffle (ShuffleNetV2 x1.0)",
        ),
        Arch(
            "mobilenet_v3",
            "image",
            _family("mobilenet_v3"),
            "torchvision replica",
            "squeeze-excitation with hardsigmoid, hardswish (MobileNetV3-Small)",
        ),
        Arch(
            "mnasnet",
            "image",
            _family("mnasnet"),
            "torchvision replica",
            "inverted residuals (MNASNet 1.0)",
        ),
        Arch(
            "inception",
            "image",
            _family("inception"),
            "torchvision replica",
            "parallel branches, factorised 1x7 convs, a pass-through pool branch (Inception v3)",
        ),
        Arch(
            "regnet_tv",
            "image",
            _family("regnet_tv"),
            "torchvision replica",
            "grouped convs, weight names with '-' (RegNetY-400MF)",
        ),
        Arch(
            "vit_tv",
            "image",
            _family("vit_tv"),
            "torchvision replica",
            "nn.MultiheadAttention (ViT-B/16)",
        ),
    ]
}


def _reset(model: nn.Module, defaults: bool) -> None:
    """PyTorch's default initialisation for every layer that has one, and batch-norm scales and
    shifts spread as trained ones are (Hugging Face initialises weights and batch-norm scales
    with std 0.02, under which a deep CNN's logits vanish to ~1e-24: every output would agree
    with every other, and parity checks would test nothing)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding, nn.LayerNorm)):
            if defaults:
                module.reset_parameters()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)


def _calibrate(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
    """Batch-norm statistics from ``batches`` (train mode, cumulative average), then eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(**batch) if "input_ids" in batch else model(batch["x"])
    model.eval()


def make_inputs(name: str, n: int, real: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random inputs for ``name``: ``x`` (images in [0, 1]), or ``input_ids`` (int64 tokens,
    the tail padded with token 0 on some rows) and ``attention_mask`` (int64, 0 on the padding)."""
    arch = ARCHS[name]
    rng = np.random.default_rng(seed)
    size = arch.size(real)
    if arch.kind == "image":
        return {"x": rng.random((n, 3, size, size), dtype=np.float32)}
    vocab = VOCAB if not real else 1000
    ids = rng.integers(1, vocab, (n, size)).astype(np.int64)
    lengths = rng.integers(size // 2, size + 1, n)
    mask = (np.arange(size)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def make_data(name: str, n: int = 24, real: bool = False, seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs and labels ``y`` (int64 in [0, CLASSES)), as written to a user's ``.npz``."""
    data = make_inputs(name, n, real, seed)
    data["y"] = np.random.default_rng(seed + 100).integers(0, CLASSES, n).astype(np.int64)
    return data


def build(name: str, real: bool = False) -> nn.Module:
    """Architecture ``name``: seeded random weights, calibrated batch-norm statistics, eval mode."""
    torch.manual_seed(0)
    model = ARCHS[name].build(real)
    _reset(model, defaults=ARCHS[name].source == "transformers")
    if hasattr(model, "config"):  # transformers: keep plain tensors out of the default dict outputs
        model.config.use_cache = False
    batches = [
        {
            k: torch.from_numpy(v)
            for k, v in make_inputs(name, 8 if not real else 4, real, seed).items()
        }
        for seed in (10, 11, 12)
    ]
    _calibrate(model, batches)
    return model.eval()


for _name in ARCHS:  # the PATH.py:FUNC entrypoints, small
    globals()[_name] = partial(build, _name)
