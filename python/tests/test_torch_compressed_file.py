"""msp.torch.save_compressed / load_compressed: exact round trips, the documented file layout (read
back with safetensors and checked against numpy references written here, including compressed-tensors'
sparse-24-bitmask definition), and every kind of broken file rejected with the model unchanged."""

import copy
import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from llama_like import LlamaLike, token_ids
from masking_reference import ref_nm_keep
from msp.torch import PackedLinear, apply_plan, compress, linear_layers, load_compressed, save_compressed

MIXED = ["2:8", "1:8", "4:8", "8:8", "3:8", 0.7, "2:4", "8:8", "6:8", 0.5, "1:8", "2:8", "5:8", 0.0]


def compressed_model(seed=0):
    model = LlamaLike(seed)
    apply_plan(linear_layers(model), MIXED, pruner="magnitude")
    compress(model, MIXED)
    model.blocks[1].gate_proj.to(torch.bfloat16)  # a layer whose values are bfloat16 in a float32 model
    return model


def bits(t):
    return t.detach().contiguous().view(torch.uint8)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(bits(sa[key]), bits(sb[key])), key


def structure(model):
    return [(name, type(m).__name__, str(getattr(m, "level", ""))) for name, m in model.named_modules()]


@pytest.fixture
def saved(tmp_path):
    model = compressed_model()
    path = tmp_path / "model.safetensors"
    save_compressed(model, path)
    return model, path


def test_round_trip_is_exact(saved, tmp_path):
    model, path = saved
    ids = token_ids(9)
    with torch.no_grad():
        expected = model(ids).logits
    for target in (lambda: LlamaLike(seed=7), LlamaLike(seed=8), compressed_model(seed=9)):
        loaded = load_compressed(target, path)
        assert structure(loaded) == structure(model)
        assert_same_state(loaded, model)
        assert loaded.lm_head.weight is loaded.embed.weight  # still tied
        with torch.no_grad():
            assert torch.equal(bits(loaded(ids).logits), bits(expected))
    again = tmp_path / "again.safetensors"
    save_compressed(loaded, again)  # the same tensors (safetensors orders the metadata as it likes)
    first, second = load_file(str(path)), load_file(str(again))
    assert list(first) == list(second) and all(torch.equal(bits(first[k]), bits(second[k])) for k in first)


def test_the_file_layout(saved):
    model, path = saved
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    stored = load_file(str(path))
    assert metadata["format"] == "msp-packed-nm" and metadata["version"] == "1"
    assert json.loads(metadata["aliases"]) == {"lm_head.weight": "embed.weight"}  # tied: stored once
    packed = {name: m for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    dense_keys = {k for k in model.state_dict() if k != "lm_head.weight" and k.rsplit(".", 1)[0] not in packed}
    packed_keys = {f"{n}.{part}" for n, m in packed.items() for part in ("values", "index", "shape", "level")
                   + (("bias",) if m.bias is not None else ())}
    assert set(stored) == dense_keys | packed_keys
    for name, module in packed.items():
        rows, cols = module.shape
        n, m = module.level.n, module.level.m
        assert stored[f"{name}.shape"].tolist() == [rows, cols] and stored[f"{name}.shape"].dtype == torch.int64
        assert stored[f"{name}.level"].tolist() == [n, m] and stored[f"{name}.level"].dtype == torch.int64
        w = module.weight.detach()
        # kept: every nonzero, and where a group holds fewer than n, its first zeros (msp's tie rule)
        keep = ref_nm_keep(np.abs(w.float().numpy()), n, m)
        assert (keep | (w == 0).numpy()).all()
        values, index = stored[f"{name}.values"], stored[f"{name}.index"].numpy()
        # index: the keep bits little-endian per row (numpy.packbits), padded to whole 32-bit words
        padded = np.zeros((rows, 32 * -(-cols // 32)), bool)
        padded[:, :cols] = keep
        assert np.array_equal(index, np.packbits(padded, axis=-1, bitorder="little"))
        # values: each row's kept weights in column order, in the layer's dtype
        assert values.dtype == module.values.dtype and values.shape == (rows, cols // m * n)
        assert torch.equal(bits(values), bits(w[torch.from_numpy(keep)].reshape(rows, -1)))


def test_a_2_4_layer_is_compressed_tensors_sparse_24_bitmask(saved):
    """compressed-tensors' sparse-24-bitmask stores `compressed` = tensor[mask].reshape(rows, cols // 2)
    and `bitmask` = numpy.packbits(mask, axis=-1, bitorder="little"): with cols % 32 == 0 these are
    msp's values and index byte for byte."""
    model, path = saved
    stored = load_file(str(path))
    w = model.blocks[0].down_proj.weight.detach()  # 2:4, 64 x 128
    mask = w != 0
    assert int(mask.sum()) == w.numel() // 2
    assert torch.equal(stored["blocks.0.down_proj.values"], w[mask].reshape(w.shape[0], -1))
    assert np.array_equal(stored["blocks.0.down_proj.index"].numpy(), np.packbits(mask.numpy(), axis=-1, bitorder="little"))


# --- broken files ------------------------------------------------------------------------------------


def snapshot(model):
    return structure(model), copy.deepcopy(model.state_dict())


def assert_unchanged(model, before):
    assert structure(model) == before[0]
    for key, value in model.state_dict().items():
        assert torch.equal(bits(value), bits(before[1][key])), key


def rewrite(path, tmp_path, change_tensors=None, change_metadata=None):
    """A copy of the file with its tensors or metadata changed, written by safetensors."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    if change_tensors:
        change_tensors(tensors)
    if change_metadata:
        change_metadata(metadata)
    out = tmp_path / "changed.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return out


def _set(key, value):
    return lambda tensors: tensors.__setitem__(key, value)


def _corrupt_index(tensors):
    index = tensors["blocks.1.gate_proj.index"].clone()
    index[3, 1] = 0xFF  # columns 8..15 of a 2:8 row: eight kept
    tensors["blocks.1.gate_proj.index"] = index


BROKEN = {  # what is changed -> the message
    "index breaks the format": (_corrupt_index, None, "packed layer 'blocks.1.gate_proj'.*row 3"),
    "level of other values": (_set("blocks.0.q_proj.level", torch.tensor([3, 8])), None, "values must have shape"),
    "level past 32": (_set("blocks.0.q_proj.level", torch.tensor([2, 64])), None, "level 2:64 must have"),
    "level n = m": (_set("blocks.0.q_proj.level", torch.tensor([8, 8])), None, "n < m"),
    "level as float": (_set("blocks.0.q_proj.level", torch.tensor([2.0, 8.0])), None, "2 int64 numbers"),
    "level of 3 numbers": (_set("blocks.0.q_proj.level", torch.tensor([2, 8, 1])), None, "2 int64 numbers"),
    "shape of another layer": (_set("blocks.0.q_proj.shape", torch.tensor([32, 64])), None, r"model's layer is \(64, 64\)"),
    "values as integers": (_set("blocks.0.q_proj.values", torch.zeros(64, 16, dtype=torch.int32)), None, "dtype"),
    "values cut short": (_set("blocks.0.q_proj.values", torch.zeros(64, 15)), None, "values must have shape"),
    "index cut short": (_set("blocks.0.q_proj.index", torch.zeros(64, 4, dtype=torch.uint8)), None, "index must have"),
    "index as int8": (_set("blocks.0.q_proj.index", torch.zeros(64, 8, dtype=torch.int8)), None, "uint8"),
    "bias missing": (lambda t: t.pop("blocks.0.q_proj.bias"), None, "lacks blocks.0.q_proj.bias"),
    "values missing": (lambda t: t.pop("blocks.0.q_proj.values"), None, "lacks blocks.0.q_proj.values"),
    "norm missing": (lambda t: t.pop("norm.weight"), None, r"missing \['norm.weight'\]"),
    "extra tensor": (_set("blocks.0.extra", torch.zeros(2)), None, r"unexpected \['blocks.0.extra'\]"),
    "embedding of another shape": (_set("embed.weight", torch.zeros(96, 64)), None, r"other shapes \['embed.weight'"),
    "unknown layer": (_set("blocks.7.q_proj.level", torch.tensor([2, 8])), None, "'blocks.7.q_proj', which the model"),
    "not a linear": (_set("norm.level", torch.tensor([2, 8])), None, "has a RMSNorm there"),
    "other format": (None, lambda m: m.__setitem__("format", "compressed-tensors"), "not a compressed model file"),
    "other version": (None, lambda m: m.__setitem__("version", "2"), "version"),
    "aliases not JSON": (None, lambda m: m.__setitem__("aliases", "{"), "not JSON"),
    "alias to nothing": (None, lambda m: m.__setitem__("aliases", '{"lm_head.weight": "nowhere"}'), "aliases must"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_files_are_rejected_and_the_model_is_unchanged(saved, tmp_path, case):
    _, path = saved
    change_tensors, change_metadata, message = BROKEN[case]
    broken = rewrite(path, tmp_path, change_tensors, change_metadata)
    model = LlamaLike(seed=3)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        load_compressed(model, broken)
    assert_unchanged(model, before)


def test_truncated_and_garbled_files_are_rejected(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    (header,) = struct.unpack("<Q", data[:8])
    model = LlamaLike(seed=3)
    before = snapshot(model)
    cuts = [0, 7, 8, 100, 8 + header - 1, 8 + header, 8 + header + 1000, len(data) - 1]
    variants = {f"cut at {n}": data[:n] for n in cuts}
    variants["header length past the end"] = struct.pack("<Q", len(data)) + data[8:]
    variants["header not JSON"] = data[:8] + b"!" + data[9:]
    variants["one byte more"] = data + b"\0"
    for label, content in variants.items():
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_compressed(model, broken)
        assert_unchanged(model, before)
    with pytest.raises(FileNotFoundError):
        load_compressed(model, tmp_path / "missing.safetensors")


def test_bad_arguments(saved):
    _, path = saved
    with pytest.raises(TypeError, match="must be an nn.Module or build one"):
        load_compressed(lambda: "a model", path)
    with pytest.raises(ValueError, match="kernels must be one of"):
        load_compressed(LlamaLike(), path, kernels="fast")
    loaded = load_compressed(LlamaLike(), path, kernels="torch")
    assert {m.kernels for m in loaded.modules() if isinstance(m, PackedLinear)} == {"torch"}


def test_a_dense_model_round_trips_too(tmp_path):
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    save_compressed(model, tmp_path / "dense.safetensors")
    loaded = load_compressed(lambda: nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)),
                             tmp_path / "dense.safetensors")
    assert_same_state(loaded, model)
