"""msp.torch.compress and PackedLinear on a tiny Llama-like model, against references written here.

References: the masked dense model (the same pruned model before ``compress``) and its float64 copy.
A compressed model's logits must be as close to the float64 logits as a small multiple of the
float32 masked dense model's own rounding error. Per layer, the kernel path must lie within the
kernel's documented bound, ``(ceil(cols / 64) + 6) * 2**-24 * sum |W x|`` plus one rounding of
the bias addition, and the dense path within the recursive-summation bound
``(cols + 2) * 2**-24 * (sum |W x| + |b|)``; each path is also pinned bit for bit to the operation
it documents (``msp.nm_linear`` on the packed weight, ``F.linear`` on the unpacked one).
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msp
from llama_like import LlamaLike, layer_names, token_ids
from msp.torch import PackedLinear, apply_plan, compress, linear_layers
from msp.torch.packed_linear import DENSE_FROM_TOKENS, torch_unpack
from torch_models import device_under_test

# 14 layers: N:8 levels, dense 8:8, 2:4 and unstructured (70%, 50%, 0%) ones.
MIXED = ["2:8", "1:8", "4:8", "8:8", "3:8", 0.7, "2:4", "8:8", "6:8", 0.5, "1:8", "2:8", "5:8", 0.0]


def pruned(plan, seed=0, dtype=torch.float32, pruner="magnitude"):
    """A LlamaLike pruned to ``plan`` (weights only; nothing compressed yet)."""
    model = LlamaLike(seed, dtype)
    apply_plan(linear_layers(model), plan, pruner=pruner)
    return model


def compressed_and_masked(plan, **kwargs):
    model = pruned(plan, **{k: v for k, v in kwargs.items() if k != "kernels"})
    masked = copy.deepcopy(model)
    compress(model, plan, kernels=kwargs.get("kernels", "auto"))
    return model, masked


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def assert_as_close_as_dense(compressed, masked, ids):
    """The compressed model's logits are about as close to float64 as the masked dense model's."""
    exact = logits(copy.deepcopy(masked).double(), ids)
    mine, dense = logits(compressed, ids).double(), logits(masked, ids).double()
    scale = float(exact.abs().max())
    assert float((mine - exact).abs().max()) <= 4 * float((dense - exact).abs().max()) + 2**-22 * scale


def packed_modules(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, PackedLinear)}


def nonzeros_per_group(w, m):
    return (w != 0).reshape(w.shape[0], -1, m).sum(-1)


# --- the compressed model computes the masked dense model -------------------------------------------


@pytest.mark.parametrize("tokens", [1, 7, 40])
@pytest.mark.parametrize("form", ["list", "dict", "Plan"])
def test_compressed_model_matches_the_masked_dense_model(form, tokens):
    names = layer_names()
    if form == "Plan":
        sizes = [m.weight.numel() for m in linear_layers(LlamaLike()).values()]
        sensitivity = np.exp(np.random.default_rng(1).uniform(0, 4, len(sizes)))
        plan = msp.plan(sizes, 0.75, msp.nm_levels(8), sensitivity=sensitivity, method="prior")
        assert 1 < len(set(plan.levels)) and plan.num_layers == len(names)
    else:
        plan = MIXED if form == "list" else dict(zip(names, MIXED))
    compressed, masked = compressed_and_masked(plan)
    assert_as_close_as_dense(compressed, masked, token_ids(tokens))


def test_what_each_planned_level_becomes():
    compressed, masked = compressed_and_masked(MIXED)
    layers = dict(masked.named_modules())
    for name, level in zip(layer_names(), MIXED):
        module, w = compressed.get_submodule(name), layers[name].weight.detach()
        level = msp.Level.parse(level)
        if level.is_nm and level.n < level.m:  # packed at its own level
            assert isinstance(module, PackedLinear) and module.level == level
        elif level.sparsity > 0:  # k:32, k the most nonzeros of any 32 columns
            k = int(nonzeros_per_group(w, 32).max())
            assert isinstance(module, PackedLinear) and module.level == msp.Level.nm(k, 32)
            assert module.nbytes < w.numel() * w.element_size()
        else:  # 8:8 and 0% stay the very same nn.Linear
            assert type(module) is nn.Linear
        assert torch.equal(module.weight.detach().view(torch.int32), w.view(torch.int32))  # bit for bit, +0 pruned


def test_the_same_modules_stay_and_the_biases_are_the_model_s():
    model = pruned(MIXED)
    before = dict(model.named_modules())
    compress(model, MIXED)
    for name, level in zip(layer_names(), MIXED):
        module = model.get_submodule(name)
        if isinstance(module, PackedLinear):
            assert module.bias is before[name].bias  # the same parameter, not a copy
        else:
            assert module is before[name]
    assert model.lm_head.weight is model.embed.weight  # the head is not a planned layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_each_layer_runs_the_documented_path(dtype, tokens):
    compressed, masked = compressed_and_masked(MIXED, dtype=dtype)
    layers = dict(masked.named_modules())
    g = torch.Generator().manual_seed(tokens)
    for name, module in packed_modules(compressed).items():
        w, b = layers[name].weight.detach(), layers[name].bias
        x = torch.randn(2, tokens, module.in_features, generator=g).to(dtype)
        with torch.no_grad():
            y = module(x)
            b = None if b is None else b.detach()
            if 2 * tokens < DENSE_FROM_TOKENS:
                expected = msp.nm_linear(x, module.packed())
                expected = expected if b is None else expected + b
            else:
                expected = F.linear(x, module.packed().unpack(), b)
        assert y.dtype == dtype and torch.equal(y, expected), name
        if dtype != torch.float32:
            continue
        exact = x.double() @ w.double().T + (0 if b is None else b.double())
        size = x.double().abs() @ w.double().abs().T
        if 2 * tokens < DENSE_FROM_TOKENS:
            bound = (math.ceil(module.in_features / 64) + 6) * 2**-24 * size + 2**-23 * exact.abs()
        else:
            bound = (module.in_features + 2) * 2**-24 * (size + (0 if b is None else b.double().abs()))
        assert ((y.double() - exact).abs() <= bound).all(), name


# --- compress refuses what it cannot keep exactly ----------------------------------------------------


def snapshot(model):
    return {name: type(module) for name, module in model.named_modules()}, copy.deepcopy(model.state_dict())


def assert_unchanged(model, saved):
    types, state = saved
    assert {name: type(module) for name, module in model.named_modules()} == types
    for key, value in model.state_dict().items():
        assert torch.equal(value.view(torch.uint8), state[key].view(torch.uint8)), key


def test_compress_refuses_weights_not_pruned_to_the_plan():
    model = LlamaLike(seed=3)  # dense
    saved = snapshot(model)
    with pytest.raises(ValueError, match=r"'blocks.0.q_proj' is not pruned to 2:8: row 0, columns 0..7 hold 8"):
        compress(model, MIXED)
    assert_unchanged(model, saved)

    model = pruned(MIXED, seed=3)
    w = model.blocks[1].gate_proj.weight.data  # planned 2:8: one group gets a third nonzero
    row, group = 17, 5
    w[row, 8 * group:8 * group + 8] = torch.arange(1, 9, dtype=w.dtype) * (torch.arange(8) < 3)
    saved = snapshot(model)
    with pytest.raises(ValueError, match=rf"'blocks.1.gate_proj' is not pruned to 2:8: row {row}, columns 40..47 hold 3"):
        compress(model, MIXED)
    assert_unchanged(model, saved)

    model = pruned(MIXED, seed=3)
    w = model.blocks[0].up_proj.weight.data  # planned 70% unstructured: one zero too few
    rows, cols = w.shape
    w[w == 0] = torch.where(torch.arange(int((w == 0).sum())) == 0, 1.0, 0.0)
    needed = rows * math.floor(0.7 * cols)
    with pytest.raises(ValueError, match=rf"'blocks.0.up_proj' is not pruned to 70%: it holds {needed - 1} zeros, "
                                         rf"the level leaves at least {needed}"):
        compress(model, MIXED)


def test_compress_rejects_bad_arguments_before_changing_anything():
    model = pruned(MIXED, seed=4)
    saved = snapshot(model)
    with pytest.raises(ValueError, match="the plan has 3 levels but 14 layers"):
        compress(model, ["2:8"] * 3)
    with pytest.raises(ValueError, match="kernels must be one of"):
        compress(model, MIXED, kernels="fast")
    with pytest.raises(TypeError, match="'e' is a Embedding; compress replaces nn.Linear"):
        compress(model, ["2:8"], layers={"e": model.embed})
    with pytest.raises(ValueError, match="'x' is not a submodule of the model"):
        compress(model, ["2:8"], layers={"x": nn.Linear(8, 8)})
    w = model.blocks[1].o_proj.weight.data  # planned 1:8: a group holding only a NaN
    kept = w[3, :8].clone()
    w[3, :8] = torch.tensor([float("nan")] + [0.0] * 7)
    with pytest.raises(msp.InvalidArgumentError, match="NaN"):
        compress(model, MIXED)
    assert_unchanged(model, (saved[0], {**saved[1], "blocks.1.o_proj.weight": w.clone()}))
    w[3, :8] = kept
    saved = snapshot(model)
    double = copy.deepcopy(model).double()
    with pytest.raises(ValueError, match="of dtype torch.float64; compress packs float32, float16 or bfloat16"):
        compress(double, MIXED)
    compress(model, MIXED)  # the model itself was fine all along
    assert packed_modules(model) and saved[0] != {n: type(m) for n, m in model.named_modules()}


def test_unstructured_layers_stay_dense_when_packing_would_not_be_smaller():
    plan = ["4:8"] * 5 + [0.05, "2:4"] + ["4:8"] * 7  # 5%: some 32 columns hold 32 nonzeros, or nearly
    compressed, masked = compressed_and_masked(plan)
    assert type(compressed.blocks[0].up_proj) is nn.Linear
    layer = nn.Sequential(nn.Linear(48, 16))  # 48 columns: no groups of 32
    msp.prune_topk_(layer[0].weight.data, 0.75)
    compress(layer, [0.75])
    assert type(layer[0]) is nn.Linear


# --- the fallback path, devices, autograd, the weight attribute ----------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,m,cols", [(2, 8, 64), (1, 8, 40), (3, 4, 36), (2, 4, 96), (5, 32, 64), (7, 16, 48)])
def test_torch_unpack_equals_the_library_and_a_numpy_reference(dtype, n, m, cols):
    w = torch.randn(6, cols, generator=torch.Generator().manual_seed(cols)).to(dtype)
    packed = msp.nm_pack(w, (n, m))
    keep = np.unpackbits(packed.index.numpy(), axis=-1, bitorder="little")[:, :cols].astype(bool)
    reference = torch.zeros_like(w)
    reference[torch.from_numpy(keep)] = packed.values.reshape(-1)
    mine = torch_unpack(packed.values, packed.index, packed.shape)
    assert torch.equal(mine.view(torch.uint8), reference.view(torch.uint8))
    assert torch.equal(mine.view(torch.uint8), packed.unpack().view(torch.uint8))


def test_the_fallback_path_forced_on_the_cpu():
    native, masked = compressed_and_masked(MIXED)
    forced, _ = compressed_and_masked(MIXED, kernels="torch")
    assert {m.kernels for m in packed_modules(forced).values()} == {"torch"}
    ids = token_ids(3)
    assert_as_close_as_dense(forced, masked, ids)
    for name, module in packed_modules(forced).items():
        x = torch.randn(1, 2, module.in_features)
        with torch.no_grad():
            expected = F.linear(x, torch_unpack(module.values, module.index, module.shape), module.bias)
            assert torch.equal(module(x), expected)
        assert torch.equal(module.weight, native.get_submodule(name).weight)
    module = packed_modules(native)["blocks.0.q_proj"]
    module.kernels = "torch"  # settable; checked
    with pytest.raises(ValueError, match="kernels must be one of"):
        module.kernels = "gpu"


@pytest.mark.skipif(device_under_test().type == "cpu", reason="no accelerator: the path is forced on the CPU above")
def test_a_compressed_model_on_the_device():
    device = device_under_test()
    compressed, masked = compressed_and_masked(MIXED)
    ids = token_ids(5)
    on_device = copy.deepcopy(compressed).to(device)
    assert {m.values.device.type for m in packed_modules(on_device).values()} == {device.type}
    exact = logits(copy.deepcopy(masked).double(), ids)
    dense = logits(masked, ids).double()
    mine = logits(on_device, ids.to(device)).double().cpu()
    assert float((mine - exact).abs().max()) <= 4 * float((dense - exact).abs().max()) + 2**-22 * float(exact.abs().max())
    model = pruned(MIXED).to(device)  # compress a model that lives on the device: packs on the host
    compress(model, MIXED)
    for name, module in packed_modules(model).items():
        assert module.values.device.type == device.type
        assert torch.equal(module.index.cpu(), compressed.get_submodule(name).index)


def test_gradients_reach_inputs_and_biases():
    compressed, masked = compressed_and_masked(MIXED)
    ids = token_ids(6)
    for model in (compressed, masked):
        model.zero_grad()
        model(ids).logits.square().mean().backward()  # grad mode, parameters require grad: the dense path
    theirs = dict(masked.named_parameters())
    for name, mine in compressed.named_parameters():
        grad = theirs[name].grad
        assert mine.grad is not None and torch.allclose(mine.grad, grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max())), name
    assert all(not b.requires_grad for m in packed_modules(compressed).values() for b in m.buffers())

    module = compressed.blocks[0].q_proj
    module.bias.grad = None
    x = torch.randn(3, module.in_features)  # no grad for x: the kernel, and the bias still gets its gradient
    module(x).sum().backward()
    assert torch.equal(module.bias.grad, torch.full_like(module.bias, 3.0))
    module.kernels = "native"
    with pytest.raises(ValueError, match="nm_linear has no backward"):
        module(x.requires_grad_())


def test_the_weight_attribute_and_casts():
    compressed, masked = compressed_and_masked(MIXED)
    module, dense = compressed.blocks[1].gate_proj, masked.blocks[1].gate_proj.weight.detach()
    weight = module.weight
    assert weight.shape == (module.out_features, module.in_features) == dense.shape == module.shape
    assert weight.dtype == torch.float32 and weight.device.type == "cpu" and torch.equal(weight, dense)
    weight.fill_(1.0)  # a materialised copy: the module is unchanged
    assert torch.equal(module.weight, dense)
    with pytest.raises((AttributeError, KeyError)):
        module.weight = nn.Parameter(dense)

    module.to(torch.bfloat16)  # rounds the kept values; float32 inputs still take the kernel
    assert module.values.dtype == torch.bfloat16 and module.index.dtype == torch.uint8
    assert torch.equal(module.weight, dense.bfloat16())
    x = torch.randn(2, module.in_features)
    with torch.no_grad():
        assert torch.equal(module(x), msp.nm_linear(x, msp.nm_pack(dense.bfloat16(), "2:8")))


def test_a_deep_copy_has_its_own_weights():
    compressed, _ = compressed_and_masked(MIXED)
    ids = token_ids(2)
    before = logits(compressed, ids)
    twin = copy.deepcopy(compressed)
    assert torch.equal(logits(twin, ids), before)
    twin.blocks[0].q_proj.values.mul_(2)
    assert not torch.equal(logits(twin, ids), before) and torch.equal(logits(compressed, ids), before)


def test_packed_linear_checks_what_it_is_given():
    w = torch.randn(8, 32)
    packed = msp.nm_pack(w, "2:8")
    layer = PackedLinear(packed, torch.zeros(8))
    assert isinstance(layer.bias, nn.Parameter) and layer.level == msp.Level.nm(2, 8) and layer.nbytes == 8 * 8 * 4 + 32
    with pytest.raises(TypeError, match="PackedNM of torch tensors"):
        PackedLinear(msp.nm_pack(w.numpy(), "2:8"))
    with pytest.raises(ValueError, match=r"bias must be a tensor of shape \(8,\)"):
        PackedLinear(packed, torch.zeros(7))
    with pytest.raises(TypeError, match="bias must be a tensor"):
        PackedLinear(packed, [0.0] * 8)
    index = packed.index.clone()
    index[5, 0] = 0b111  # three kept columns in the first group of a 2:8 row
    with pytest.raises(msp.InvalidArgumentError, match="row 5"):
        PackedLinear(msp.PackedNM(packed.values, index, (8, 32), "2:8"))
