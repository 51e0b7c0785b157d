"""msp.torch.forward: the device and forward utilities the msp.torch modules share."""

import types

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from msp.torch.forward import call_model, device_of, eval_mode, logits_of, to_device  # noqa: E402


class Recorder(nn.Module):
    """Records how it was called; returns its inputs."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return args, kwargs


def test_device_of_a_model():
    assert device_of(nn.Linear(2, 2)) == torch.device("cpu")
    assert device_of(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert device_of(nn.Tanh()) == torch.device("cpu")  # no parameters


def test_to_device_moves_every_tensor_and_keeps_the_structure():
    batch = {"ids": torch.ones(2), "pair": (torch.zeros(1), [torch.ones(1), "text"]), "n": 3}
    moved = to_device(batch, torch.device("meta"))
    assert moved["ids"].device.type == "meta" and moved["n"] == 3
    assert type(moved["pair"]) is tuple and type(moved["pair"][1]) is list
    assert moved["pair"][0].device.type == "meta" and moved["pair"][1][0].device.type == "meta"
    assert moved["pair"][1][1] == "text"


def test_call_model_on_each_kind_of_batch():
    model = Recorder()
    ids = torch.ones(1, 3, dtype=torch.long)
    call_model(model, ids)
    call_model(model, {"input_ids": ids, "labels": ids})
    call_model(model, (ids, ids))
    (a, _), (b, kw), (c, _) = model.calls
    assert a == (ids,) and b == () and list(kw) == ["input_ids"] and len(c) == 2  # labels are not passed
    with pytest.raises(TypeError, match="a batch is"):
        call_model(model, "text")


def test_logits_of_each_kind_of_output():
    logits = torch.zeros(1, 2, 3)
    assert logits_of(logits) is logits
    assert logits_of(types.SimpleNamespace(logits=logits)) is logits
    assert logits_of((logits, "cache")) is logits
    with pytest.raises(TypeError, match="without a .logits tensor; hint"):
        logits_of({"logits": logits}, "; hint")


def test_eval_mode_restores_every_modules_own_mode_also_on_errors():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    model[1].eval()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == [True, True, False]
