"""msp.torch.layers: linear_layers (order, ignore rules, Conv1D refused) and block_groups, on tiny
models built here."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from msp.torch import block_groups, linear_layers  # noqa: E402
from msp.torch.layers import is_hf_conv1d, layer_items, layer_weights  # noqa: E402
from torch_models import BlockLM, MlpLM as TinyLM  # noqa: E402


# --- linear_layers ------------------------------------------------------------------------------


def test_linear_layers_in_module_order_with_ignore_rules():
    model = TinyLM()
    assert list(linear_layers(model)) == ["fc1", "fc2", "block.0"]
    assert list(linear_layers(model, ignore=[])) == ["fc1", "fc2", "block.0", "lm_head"]
    assert list(linear_layers(model, ignore="block")) == ["fc1", "fc2", "lm_head"]
    assert list(linear_layers(model, ignore=("0", "lm_head"))) == ["fc1", "fc2"]
    assert linear_layers(model)["fc1"] is model.fc1
    outer = nn.ModuleDict({"model": model})
    assert list(linear_layers(outer)) == ["model.fc1", "model.fc2", "model.block.0"]
    with pytest.raises(TypeError, match="module names"):
        linear_layers(model, ignore=[3])


def test_hugging_face_conv1d_is_rejected_unless_ignored():
    class Conv1D(nn.Module):  # the shape of transformers.pytorch_utils.Conv1D: weight [in, out]
        def __init__(self, nf, nx):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(nx, nf))

    Conv1D.__module__ = "transformers.pytorch_utils"
    model = nn.ModuleDict({"attn": nn.ModuleDict({"c_attn": Conv1D(6, 4)}), "proj": nn.Linear(4, 4)})
    with pytest.raises(TypeError, match=r"Conv1D modules \(attn.c_attn\).*transpose"):
        linear_layers(model)
    assert list(linear_layers(model, ignore=["c_attn"])) == ["proj"]
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    real = nn.ModuleDict({"c_fc": pytorch_utils.Conv1D(8, 4)})
    with pytest.raises(TypeError, match="c_fc"):
        linear_layers(real)


# --- block_groups ---------------------------------------------------------------------------------


def test_block_groups():
    names = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.10.mlp.down_proj",
        "lm_head",
        "model.layers.1.mlp.gate_proj",
        "encoder.block.3.layer.0.wi",
    ]
    assert block_groups(names) == [0, 0, 1, 2, 3, 1, 4]
    assert block_groups(linear_layers(BlockLM())) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(TypeError):
        block_groups("model.layers.0.q")


# --- layer lists ----------------------------------------------------------------------------------


def test_layer_items_take_mappings_or_pairs_and_check_them():
    model = TinyLM()
    layers = linear_layers(model)
    assert layer_items(layers) == list(layers.items()) == layer_items(list(layers.items()))
    for bad, error, message in [
        ({}, ValueError, "layers is empty"),
        ([("a", model.fc1), ("a", model.fc2)], ValueError, "repeats a name"),
        ([model.fc1], TypeError, "mapping"),
        (model, TypeError, "mapping"),
        ({1: model.fc1}, TypeError, "names must be str"),
        ({"a": model.fc1.weight}, TypeError, "not an nn.Module"),
    ]:
        with pytest.raises(error, match=message):
            layer_items(bad)


def test_layer_weights_refuse_missing_and_shared_weights():
    model = TinyLM()
    assert [(n, w) for n, _, w in layer_weights({"fc1": model.fc1})] == [("fc1", model.fc1.weight)]
    with pytest.raises(ValueError, match="no .weight"):
        layer_weights({"act": nn.Tanh()})
    with pytest.raises(ValueError, match="'a' and 'b' share one weight"):
        layer_weights({"a": model.fc1, "b": model.fc1})


def test_conv1d_is_recognised_by_class_name_and_module():
    class Conv1D(nn.Module):
        pass

    assert not is_hf_conv1d(Conv1D())  # defined here, not in transformers
    Conv1D.__module__ = "transformers.pytorch_utils"
    assert is_hf_conv1d(Conv1D()) and not is_hf_conv1d(nn.Linear(2, 2))
