"""msp.torch.layers: linear_layers (order, ignore rules, Conv1D refused) and block_groups, on tiny
models built here."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from msp.torch import block_groups, linear_layers  # noqa: E402
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
