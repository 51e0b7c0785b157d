"""``save_compressed`` / ``load_compressed``: a compressed model (``msp.torch.compress``) on disk, in
one safetensors file (the ``safetensors`` package; ``pip install safetensors``)::

    save_compressed(model, "model.safetensors")
    model = load_compressed(lambda: build_the_dense_architecture(), "model.safetensors")

Format (version 1). The file holds the model's ``state_dict``, each tensor under its own key, with
every ``PackedLinear`` stored as its state plus two small tensors, for the module named ``NAME``:

- ``NAME.values``: ``[rows, cols // m * n]`` in the weight's dtype, each row's kept weights in
  column order;
- ``NAME.index``: ``[rows, 4 * ceil(cols / 32)]`` uint8, bit ``c % 8`` of byte ``c // 8`` set when
  column ``c`` is kept (``include/msp.h``, "Compressed N:M weights");
- ``NAME.shape``: int64 ``[rows, cols]`` of the dense weight (``[out_features, in_features]``);
- ``NAME.level``: int64 ``[n, m]``;
- ``NAME.bias``: as in ``nn.Linear``, when the layer has one.

Tensors that share memory (tied embeddings) are stored once; the file's metadata holds
``"format": "msp-packed-nm"``, ``"version": "1"`` and ``"aliases"``, a JSON object mapping each
left-out key to the stored key it shares. Loading checks the header and that every tensor's bytes
match its dtype and shape (safetensors), the format and version, each packed layer's arrays (shape,
level, dtypes and sizes) and its index (by the library, row by row), and that the file's keys and
shapes are exactly the model's; any mismatch raises ``ValueError`` before the model is changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..packed import PackedNM
from .kernels import check_kernels
from .packed_linear import PackedLinear

__all__ = ["save_compressed", "load_compressed", "FORMAT", "FORMAT_VERSION"]

FORMAT = "msp-packed-nm"
"""The ``format`` entry of a compressed model file's metadata."""

FORMAT_VERSION = "1"
"""The ``version`` entry this module writes and reads."""

_PACKED = ("values", "index", "shape", "level")


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError("save_compressed and load_compressed need the safetensors package: "
                          "pip install safetensors") from error
    return safetensors


def _identity(t: torch.Tensor) -> tuple:
    """What makes two state tensors the same memory (tied weights)."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def save_compressed(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` (compressed by ``msp.torch.compress`` or not) to a safetensors file in the
    format of this module's docstring. Tensors on other devices are copied to the host.

    Raises:
        ImportError: safetensors is not installed.
    """
    safetensors = _safetensors()
    tensors: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, PackedLinear):
            tensors[f"{name}.shape"] = torch.tensor(module.shape, dtype=torch.int64)
            tensors[f"{name}.level"] = torch.tensor([module.level.n, module.level.m], dtype=torch.int64)
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        first = seen.setdefault(_identity(tensor), key)
        if first != key:
            aliases[key] = first
        else:
            tensors[key] = tensor.cpu().contiguous()
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "aliases": json.dumps(aliases)}
    safetensors.torch.save_file(tensors, os.fspath(path), metadata=metadata)


def _read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of the file (on the CPU) and its aliases; ``ValueError`` for a file that is not
    a compressed model file of this version."""
    safetensors = _safetensors()
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except safetensors.SafetensorError as error:
        raise ValueError(f"{os.fspath(path)} is not a readable safetensors file: {error}") from error
    if metadata.get("format") != FORMAT or metadata.get("version") != FORMAT_VERSION:
        raise ValueError(f"{os.fspath(path)} is not a compressed model file of format {FORMAT} version "
                         f"{FORMAT_VERSION} (its metadata: format {metadata.get('format')!r}, version "
                         f"{metadata.get('version')!r})")
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{os.fspath(path)}: the aliases entry is not JSON: {error}") from error
    if not (isinstance(aliases, dict) and all(isinstance(k, str) and k not in state and isinstance(v, str)
                                              and v in state for k, v in aliases.items())):
        raise ValueError(f"{os.fspath(path)}: aliases must map left-out keys to stored keys")
    return state, aliases


def _pair(state: dict[str, torch.Tensor], key: str) -> tuple[int, int]:
    """Two int64 numbers stored under ``key``."""
    t = state.get(key)
    if t is None or t.dtype != torch.int64 or tuple(t.shape) != (2,):
        found = "nothing" if t is None else f"{t.dtype} of shape {tuple(t.shape)}"
        raise ValueError(f"{key} must be 2 int64 numbers, the file holds {found}")
    return int(t[0]), int(t[1])


def _stored_layer(model: nn.Module, name: str, state: dict[str, torch.Tensor], kernels: str) -> PackedLinear:
    """The packed layer ``name`` of the file, checked against the file's format and the model."""
    try:
        module = model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(f"the file holds a packed layer {name!r}, which the model does not have") from error
    if not isinstance(module, (nn.Linear, PackedLinear)):
        raise ValueError(f"the file holds a packed layer {name!r}, but the model has a {type(module).__name__} there")
    shape, level = _pair(state, f"{name}.shape"), _pair(state, f"{name}.level")
    if shape != (module.out_features, module.in_features):
        raise ValueError(f"{name}.shape is {shape}, but the model's layer is ({module.out_features}, "
                         f"{module.in_features})")
    bias = state.get(f"{name}.bias")
    if (bias is None) != (module.bias is None):
        raise ValueError(f"the file {'lacks' if bias is None else 'has'} {name}.bias, the model's layer "
                         f"{'has' if bias is None else 'has no'} bias")
    values, index = state.get(f"{name}.values"), state.get(f"{name}.index")
    if values is None or index is None:
        raise ValueError(f"the file lacks {name}.values or {name}.index")
    try:
        packed = PackedNM(values, index, shape, level)
        layer = PackedLinear(packed, None if bias is None else nn.Parameter(bias, requires_grad=module.bias.requires_grad),
                             kernels=kernels)
    except (TypeError, ValueError) as error:
        raise ValueError(f"packed layer {name!r}: {error}") from error
    return layer.to(module.values.device if isinstance(module, PackedLinear) else module.weight.device)


def load_compressed(model_or_factory: nn.Module | Callable[[], nn.Module], path: str | os.PathLike, *,
                    kernels: str = "auto") -> nn.Module:
    """Load a file of :func:`save_compressed` into a model of the same architecture.

    Args:
        model_or_factory: the model (dense as built, or compressed), or a function without
            arguments that builds it. Its layers named in the file become ``PackedLinear`` modules
            (on the device of the layer they replace); every other tensor is loaded into it.
        path: the file.
        kernels: the packed modules' ``kernels`` (see ``msp.torch.packed_linear``).

    Returns:
        The model.

    Raises:
        ImportError: safetensors is not installed.
        TypeError: ``model_or_factory`` is not a module or does not build one.
        ValueError: a file that is not a valid compressed model file, or one of another
            architecture (see the module docstring); the model is unchanged then.
        FileNotFoundError: no such file.
    """
    check_kernels(kernels)
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_or_factory must be an nn.Module or build one, got {type(model).__name__}")
    state, aliases = _read(path)
    names = [key[: -len(".level")] for key in state if key.endswith(".level")]
    try:
        layers = {name: _stored_layer(model, name, state, kernels) for name in names}
    except ValueError as error:
        raise ValueError(f"{os.fspath(path)}: {error}") from error
    for name in names:
        del state[f"{name}.shape"], state[f"{name}.level"]
    for alias, key in aliases.items():
        state[alias] = state[key]
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()
                if not any(key == f"{name}.{part}" for name in layers for part in ("weight", *_PACKED))}
    for name, layer in layers.items():
        expected.update({f"{name}.{key}": tuple(t.shape) for key, t in layer.state_dict().items()})
    found = {key: tuple(t.shape) for key, t in state.items()}
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
        raise ValueError(f"{os.fspath(path)} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}, "
                         f"other shapes {wrong[:3]}")
    for name, layer in layers.items():
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, layer)
    model.load_state_dict(state, strict=True)
    return model
