"""The zoo's MNIST and MNIST-1D data come from the installed packages, offline and reproducibly, and
its architectures are the papers' (parameter counts)."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch

from explorer import data as data_module
from explorer.data import load_data
from explorer.models.zoo import build


def test_mnist_and_mnist1d_build_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access during a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    data_module._mnist_arrays.cache_clear()
    data_module._mnist1d_arrays.cache_clear()
    mnist = load_data("zoo:mnist-28")
    mnist1d = load_data("zoo:mnist1d")
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (3500, 500, 1000)
    assert mnist.input_shape == (1, 28, 28) and load_data("zoo:mnist-flat").input_shape == (784,)
    assert 0.0 <= float(mnist.test.x.min()) and float(mnist.test.x.max()) <= 1.0
    assert (len(mnist1d.train), len(mnist1d.val), len(mnist1d.test)) == (3500, 500, 1000)
    assert mnist1d.input_shape == (40,)
    assert sorted(torch.unique(mnist1d.test.y).tolist()) == list(range(10))


def test_zoo_data_is_reproducible_and_leaves_global_rng_alone() -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    data_module._mnist1d_arrays.cache_clear()
    first = load_data("zoo:mnist1d")  # make_dataset seeds the global generators itself
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    data_module._mnist1d_arrays.cache_clear()
    assert load_data("zoo:mnist1d").fingerprint() == first.fingerprint()
    # the cached arrays cannot be changed through a loaded split
    split = load_data("zoo:mnist-flat").test
    split.x.mul_(0)
    assert float(load_data("zoo:mnist-flat").test.x.sum()) > 0
    # the validation signals are held out of the training ones
    train = {tuple(r) for r in first.train.x.numpy().round(6).tolist()}
    assert not any(tuple(r) in train for r in first.val.x.numpy().round(6).tolist())


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mnist-lenet300", 266_610),
        ("mnist-lenet5", 431_080),
        ("mnist1d-mlp", 276_010),
        ("mnist1d-cnn", 5_210),
    ],
)
def test_architectures_have_the_papers_sizes(name: str, params: int) -> None:
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) == params
    x = load_data(f"zoo:{name}").test.x[:4]
    assert model(x).shape == (4, 10)


def test_untrained_build_is_seeded_and_keeps_the_callers_rng() -> None:
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a = build("mnist-lenet5", pretrained=False, seed=3)
    assert torch.equal(torch.rand(1), expected)
    b = build("mnist-lenet5", pretrained=False, seed=3)
    c = build("mnist-lenet5", pretrained=False, seed=4)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(
        a.conv1.weight, c.conv1.weight
    )
    assert not torch.equal(a.fc1.weight, build("mnist-lenet5").fc1.weight)
