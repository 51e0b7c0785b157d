"""Models on any device: every public pruning and Fisher function of msp.torch gives on the torch
path exactly what the native kernels give (bit for bit), and the evaluation helpers run there.

The device is ``$MSP_TEST_DEVICE``, else CUDA when available, else the CPU, where the torch path is
forced with ``kernels="torch"``: the same tests run unchanged on a GPU. The reference is always a
CPU copy of the same model pruned by the native kernels, whose own correctness the masking tests
check against a stable sort.
"""

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from msp.torch import (  # noqa: E402
    Pruner,
    activation_norms,
    apply_plan,
    fisher_traces,
    kl_to_dense,
    linear_layers,
    perplexity,
    prune,
    reference_logits,
)
from torch_models import BlockLM, assert_same, block_batches, device_under_test, snapshot  # noqa: E402

DEVICE = device_under_test()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def hard_stack(dtype, seed=0):
    """Four linears with in_features 32, 64, 32, 96 (every N:M up to 8:32 fits), weights full of
    ties, signed zeros and subnormals."""
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 96), nn.Linear(96, 32))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model:
            w = torch.randint(-4, 5, layer.weight.shape, generator=g).float()
            tiny = torch.rand(layer.weight.shape, generator=g) < 0.2
            w[tiny] *= torch.finfo(dtype).smallest_normal / 8
            w[torch.rand(layer.weight.shape, generator=g) < 0.05] = -0.0
            layer.weight.copy_(w)
    return model.to(dtype)


def hard_norms(layers, seed=1):
    g = torch.Generator().manual_seed(seed)
    norms = {}
    for name, module in layers.items():
        norm = torch.randint(0, 4, (module.in_features,), generator=g).float() / 2  # zeros and ties
        norms[name] = norm
    return norms


PLANS = [
    ["1:2", "2:4", "2:8", "7:8"],
    ["4:16", "8:32", "8:8", "1:8"],
    ["0%", "30%", "70%", "99%"],
    ["50%", "2:4", "90%", "8:32"],
    ["2:8"] * 4,
]


def on_device(model):
    return copy.deepcopy(model).to(DEVICE)


def assert_same_on_cpu(device_model, native_model):
    assert_same(copy.deepcopy(device_model).cpu(), snapshot(native_model))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
@pytest.mark.parametrize("scope", ["row", "layer"])
@pytest.mark.parametrize("dense_copies", ["device", "host"])
def test_pruner_on_the_device_equals_native(dtype, criterion, scope, dense_copies):
    native_model = hard_stack(dtype)
    device_model = on_device(native_model)
    dense = snapshot(native_model)
    native_layers, device_layers = linear_layers(native_model), linear_layers(device_model)
    norms = hard_norms(native_layers) if criterion == "wanda" else None
    native = Pruner(native_layers, criterion, norms, scope=scope, kernels="native")
    device = Pruner(device_layers, criterion, norms, scope=scope, kernels="torch", dense_copies=dense_copies,
                    cache_bytes=3000)  # some cache hits, some evictions
    for plan in PLANS + PLANS[::-1]:
        native.apply(plan)
        device.apply(plan)
        assert_same_on_cpu(device_model, native_model)
    device.restore()
    assert_same(copy.deepcopy(device_model).cpu(), dense)
    where = "cpu" if dense_copies == "host" else DEVICE.type
    assert all(layer.dense.device.type == where for layer in device._layers)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_apply_plan_on_the_device_equals_native(dtype, criterion):
    native_model = hard_stack(dtype, seed=3)
    device_model = on_device(native_model)
    norms = hard_norms(linear_layers(native_model)) if criterion == "wanda" else None
    for plan, scope in [(PLANS[0], "row"), (PLANS[2], "layer"), (PLANS[3], "row")]:
        native_masks = apply_plan(linear_layers(native_model), plan, criterion, norms, scope=scope,
                                  return_masks=True, kernels="native")
        device_masks = apply_plan(linear_layers(device_model), plan, criterion, norms, scope=scope,
                                  return_masks=True, kernels="torch")
        assert list(device_masks) == list(native_masks)
        for name, mask in device_masks.items():
            assert mask.device.type == DEVICE.type and torch.equal(mask.cpu(), native_masks[name])
        assert_same_on_cpu(device_model, native_model)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_parameter", [False, True])
def test_fisher_traces_on_the_device_equal_native(dtype, per_parameter):
    """The same gradients (one model on the device), reduced by the native accumulator (copied to
    the host) and on the device: the same bits."""
    model = BlockLM(seed=5, dtype=dtype).to(DEVICE)
    layers = linear_layers(model, ignore=[])
    data = block_batches(2, rows=3)
    native = fisher_traces(model, layers, data, per_parameter=per_parameter, kernels="native", progress=False)
    device = fisher_traces(model, layers, data, per_parameter=per_parameter, kernels="torch", progress=False)
    assert list(device) == list(native) and all(v > 0 for v in device.values())
    for name in native:
        assert device[name] == native[name], name  # bit for bit, not approximately
    auto = fisher_traces(model, layers, data, per_parameter=per_parameter, progress=False)
    assert auto == native


@pytest.mark.parametrize("criterion, structure", [("wanda", "N:8"), ("magnitude", "unstructured")])
def test_prune_on_the_device_equals_native(criterion, structure):
    data = block_batches(3, seed=2)
    native_model, forced_model = BlockLM(seed=6), BlockLM(seed=6)
    settings = dict(target=0.6, structure=structure, pruner=criterion, generations=2, offspring=4, progress=False)
    native = prune(native_model, data, kernels="native", **settings)
    forced = prune(forced_model, data, kernels="torch", dense_copies="host", **settings)
    assert forced == native and forced.names == list(linear_layers(native_model))
    assert_same(forced_model, snapshot(native_model))
    # On the test device (a GPU where there is one): the model holds exactly the plan it returns.
    model = BlockLM(seed=6)
    dense = copy.deepcopy(model)
    model.to(DEVICE)
    result = prune(model, data, **{**settings, "pruner": "magnitude"})
    apply_plan(linear_layers(dense), result, "magnitude", kernels="native")
    assert_same(copy.deepcopy(model).cpu(), snapshot(dense))


def test_statistics_and_fitness_helpers_run_on_the_device():
    model = BlockLM(seed=7)
    data = block_batches(2, rows=3)
    device_model = on_device(model)
    layers, device_layers = linear_layers(model), linear_layers(device_model)
    norms = activation_norms(model, layers, data)
    device_norms = activation_norms(device_model, device_layers, data)
    for name in norms:
        assert device_norms[name].device.type == "cpu"
        torch.testing.assert_close(device_norms[name], norms[name], rtol=1e-5, atol=1e-6)
    assert perplexity(device_model, data) == pytest.approx(perplexity(model, data), rel=1e-5)
    reference = reference_logits(device_model, data, top_k=5)
    assert all(t.device.type == "cpu" for t in reference[0] if t is not None)
    Pruner(device_layers, kernels="torch").apply(["2:8"] * 6)
    Pruner(layers).apply(["2:8"] * 6)
    expected = kl_to_dense(model, data, reference_logits(BlockLM(seed=7), data, top_k=5))
    assert kl_to_dense(device_model, data, reference) == pytest.approx(expected, rel=1e-4)
