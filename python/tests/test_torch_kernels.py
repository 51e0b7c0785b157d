"""msp.torch.kernels and msp.torch.device_fisher: the torch path gives the native results bit for bit.

Pruning: ``torch_prune_nm_`` / ``torch_prune_topk_`` on the test device (``$MSP_TEST_DEVICE``, else
CUDA when available, else the CPU) against ``msp.prune_nm_`` / ``msp.prune_topk_`` on a CPU copy,
for every dtype, N:M pattern, sparsity, scope and score (magnitude, Wanda), on weights full of ties,
subnormals, signed zeros and infinities; masks also against the stable-sort reference of
``masking_reference``. Fisher: ``DeviceFisherAccumulator`` against ``msp.FisherAccumulator`` fed the
same gradients (sizes around every block and lane boundary, chunks, missing layers), and against a
float64 sum written here.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import msp  # noqa: E402
from masking_reference import ref_nm_keep, ref_topk_keep  # noqa: E402
from msp.torch import device_fisher  # noqa: E402
from msp.torch.device_fisher import DeviceFisherAccumulator  # noqa: E402
from msp.torch.kernels import check_kernels, torch_prune_nm_, torch_prune_topk_, uses_native  # noqa: E402
from torch_models import bits, device_under_test  # noqa: E402

DEVICE = device_under_test()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PATTERNS = [(1, 2), (2, 4), (2, 8), (7, 8), (4, 16), (8, 32)]
SPARSITIES = [0.0, 0.3, 0.5, 0.7, 0.9, 0.99]


def hard_weights(kind, dtype, rows=9, cols=64, seed=0):
    """Weights built to stress the order: "ties" (few distinct magnitudes, both signs, zeros of
    both signs), "tiny" (subnormals of the dtype next to normal values), "wide" (random, with
    infinities of both signs)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":
        w = torch.randint(-3, 4, (rows, cols), generator=g).float()
        w[torch.rand(rows, cols, generator=g) < 0.1] = -0.0
    elif kind == "tiny":
        smallest = torch.finfo(dtype).smallest_normal
        w = torch.randn(rows, cols, generator=g) * smallest * torch.rand(rows, cols, generator=g)
        w[:, ::5] = torch.randn(rows, (cols + 4) // 5, generator=g)
    else:
        w = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, cols, generator=g) * 3)
        w[0, 3], w[2, 10] = math.inf, -math.inf
    return w.to(dtype)


def scales(kind, cols=64, seed=1):
    """None (magnitude), or Wanda-like column scales with zeros and ties."""
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(cols, generator=g) * 3
    scale[::7] = 0.0
    scale[1::9] = 1.0
    return scale


def score_array(w, scale):
    """The float32 score a kernel ranks: |w|, times the scale in float32 when there is one."""
    score = w.float().abs()
    return (score if scale is None else score * scale).numpy()


def on_device_and_native(w, scale, prune_torch, prune_native):
    """Prune a device copy with the torch path and a CPU copy natively; return both (mask, weight)."""
    device_w = w.clone().to(DEVICE)
    native_w = w.clone()
    device_scale = None if scale is None else scale.to(DEVICE)
    device_mask = prune_torch(device_w, device_scale)
    native_mask = prune_native(native_w, None if scale is None else scale.numpy())
    return (device_mask.cpu(), device_w.cpu()), (native_mask, native_w)


def assert_bit_identical(device, native, reference_keep, w):
    (device_mask, device_w), (native_mask, native_w) = device, native
    assert device_mask.dtype == torch.bool and torch.equal(device_mask, native_mask)
    assert torch.equal(bits(device_w), bits(native_w))
    assert np.array_equal(device_mask.numpy(), reference_keep)
    # kept weights untouched, pruned ones +0 (not -0)
    expected = torch.where(torch.from_numpy(reference_keep), w, torch.zeros_like(w))
    assert torch.equal(bits(device_w), bits(expected))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["ties", "tiny", "wide"])
@pytest.mark.parametrize("scale_kind", [None, "wanda"])
def test_torch_nm_pruning_equals_native_bit_for_bit(dtype, kind, scale_kind):
    w, scale = hard_weights(kind, dtype), scales(scale_kind)
    if kind == "wide" and scale is not None:
        w[w.float().isinf() & (scale == 0)] = 1.0  # inf * 0 is a NaN score (tested below)
    for n, m in PATTERNS:
        device, native = on_device_and_native(
            w, scale, lambda x, s, n=n, m=m: torch_prune_nm_(x, n, m, s),
            lambda x, s, n=n, m=m: msp.prune_nm_(x, n, m, col_scale=s))
        assert_bit_identical(device, native, ref_nm_keep(score_array(w, scale), n, m), w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["ties", "tiny", "wide"])
@pytest.mark.parametrize("scale_kind", [None, "wanda"])
@pytest.mark.parametrize("scope", ["row", "layer"])
def test_torch_topk_pruning_equals_native_bit_for_bit(dtype, kind, scale_kind, scope):
    w, scale = hard_weights(kind, dtype), scales(scale_kind)
    if kind == "wide" and scale is not None:
        w[w.float().isinf() & (scale == 0)] = 1.0
    for sparsity in SPARSITIES:
        device, native = on_device_and_native(
            w, scale, lambda x, s, p=sparsity: torch_prune_topk_(x, p, scope, s),
            lambda x, s, p=sparsity: msp.prune_topk_(x, p, scope=scope, col_scale=s))
        assert_bit_identical(device, native, ref_topk_keep(score_array(w, scale), sparsity, scope), w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_return_mask_false_prunes_the_same(dtype):
    w = hard_weights("ties", dtype)
    a, b = w.clone().to(DEVICE), w.clone().to(DEVICE)
    assert torch_prune_nm_(a, 2, 8, return_mask=False) is None
    torch_prune_nm_(b, 2, 8)
    assert torch.equal(bits(a), bits(b))
    assert torch_prune_topk_(a, 0.5, "layer", return_mask=False) is None


def test_a_nan_score_raises_the_native_message_and_writes_nothing():
    w = hard_weights("wide", torch.float32)
    w[4, 9] = math.nan
    for prune_torch, prune_native in [
        (lambda x: torch_prune_nm_(x, 2, 4), lambda x: msp.prune_nm_(x, 2, 4)),
        (lambda x: torch_prune_topk_(x, 0.5, "layer"), lambda x: msp.prune_topk_(x, 0.5, scope="layer")),
    ]:
        device_w = w.clone().to(DEVICE)
        with pytest.raises(msp.InvalidArgumentError) as native_error:
            prune_native(w.clone())
        with pytest.raises(msp.InvalidArgumentError) as device_error:
            prune_torch(device_w)
        assert str(device_error.value) == str(native_error.value) == "weights[4][9] is NaN"
        assert torch.equal(bits(device_w.cpu()), bits(w))
    w = hard_weights("wide", torch.bfloat16)  # inf at [0][3]; a zero scale there makes its score NaN
    scale = torch.ones(64)
    scale[3] = 0.0
    device_w = w.clone().to(DEVICE)
    with pytest.raises(msp.InvalidArgumentError) as native_error:
        msp.prune_nm_(w.clone(), 2, 4, col_scale=scale)
    with pytest.raises(msp.InvalidArgumentError) as device_error:
        torch_prune_nm_(device_w, 2, 4, scale.to(DEVICE))
    assert str(device_error.value) == str(native_error.value)
    assert str(device_error.value) == "score of weights[0][3] is NaN (weight inf times col_scale[3] = 0)"
    assert torch.equal(bits(device_w.cpu()), bits(w))


def test_bad_arguments_of_the_torch_kernels():
    w = torch.ones(2, 8, device=DEVICE)
    with pytest.raises(msp.InvalidArgumentError, match="sparsity"):
        torch_prune_topk_(w, 1.0)
    with pytest.raises(msp.InvalidArgumentError, match="pattern 2:3"):
        torch_prune_nm_(w, 2, 3)
    with pytest.raises(ValueError, match="scope"):
        torch_prune_topk_(w, 0.5, "column")
    with pytest.raises(ValueError, match="2-D"):
        torch_prune_nm_(torch.ones(8, device=DEVICE), 2, 4)
    with pytest.raises(TypeError, match="float64"):
        torch_prune_nm_(torch.ones(2, 8, dtype=torch.float64, device=DEVICE), 2, 4)
    with pytest.raises(ValueError, match=r"col_scale must have shape \(8,\)"):
        torch_prune_nm_(w, 2, 4, torch.ones(4, device=DEVICE))
    assert (w == 1).all()


def test_the_kernel_choice():
    cpu, meta = torch.ones(1), torch.ones(1, device="meta")
    assert [uses_native(cpu, k) for k in ("auto", "native", "torch")] == [True, True, False]
    assert [uses_native(meta, k) for k in ("auto", "native", "torch")] == [False, True, False]
    assert check_kernels("torch") == "torch"
    with pytest.raises(ValueError, match="kernels must be one of"):
        check_kernels("gpu")


# --- Fisher sums ---------------------------------------------------------------------------------

SIZES = [1, 15, 16, 17, 255, 256, 257, 4095, 4096, 4097, 3 * 4096 + 77, 70000]


def gradient(n, dtype, g):
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * (2 if dtype == torch.float16 else 6))
    return torch.nan_to_num(x.to(dtype), posinf=1.0, neginf=-1.0)


def feed(accumulators, dtype, samples=3, seed=0):
    """Add the same gradients to every accumulator: some layers skipped in some samples, some in
    two chunks; return the float64 reference sums per layer (over closed samples)."""
    g = torch.Generator().manual_seed(seed)
    reference = [0.0] * len(SIZES)
    for s in range(samples):
        for layer, n in enumerate(SIZES):
            if (layer + s) % 5 == 0:
                continue
            x = gradient(n, dtype, g)
            parts = [x[: n // 3], x[n // 3 :]] if layer % 4 == 1 and n > 3 else [x]
            for part in parts:
                for acc, device in accumulators:
                    acc.add(layer, part.to(device))
            reference[layer] += math.fsum((x.double() ** 2).tolist())
        for acc, _ in accumulators:
            acc.end_sample()
    return [r / samples for r in reference]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("queue_bytes", [device_fisher.QUEUE_BYTES, 0])
def test_device_fisher_equals_native_bit_for_bit(dtype, queue_bytes, monkeypatch):
    """Also with the queue combined after every sample (queue_bytes 0) instead of once at the end."""
    monkeypatch.setattr(device_fisher, "QUEUE_BYTES", queue_bytes)
    native, device = msp.FisherAccumulator(SIZES), DeviceFisherAccumulator(SIZES)
    reference = feed([(native, "cpu"), (device, DEVICE)], dtype)
    assert device.num_samples == native.num_samples == 3
    for per_parameter in (False, True):
        got, expected = device.traces(per_parameter), native.traces(per_parameter)
        assert got.dtype == np.float64 and np.array_equal(got.view(np.int64), expected.view(np.int64))
    for got, want in zip(device.traces(), reference):
        assert got == pytest.approx(want, rel=1e-13, abs=0)


def test_device_fisher_reports_closed_samples_only_and_checks_its_input():
    native, device = msp.FisherAccumulator([8, 4]), DeviceFisherAccumulator([8, 4])
    with pytest.raises(msp.InvalidStateError, match="no calibration sample"):
        device.traces()
    for acc, where in [(native, "cpu"), (device, DEVICE)]:
        acc.add(0, torch.arange(8.0, device=where))
        acc.end_sample()
        acc.add(1, torch.ones(4, device=where))  # open sample: not in the traces
    assert device.traces().tolist() == native.traces().tolist() == [140.0, 0.0]
    with pytest.raises(msp.InvalidArgumentError, match="exceeds"):
        device.add(1, torch.ones(1, device=DEVICE))
    with pytest.raises(msp.InvalidArgumentError, match="layer"):
        device.add(2, torch.ones(1, device=DEVICE))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        device.add(0, torch.ones(1, dtype=torch.float64, device=DEVICE))
    with pytest.raises(msp.InvalidArgumentError, match="sizes"):
        DeviceFisherAccumulator([3, 0])
    device.end_sample()
    device.add(0, torch.tensor([1.0, math.inf], device=DEVICE))
    device.end_sample()
    with pytest.raises(msp.InvalidArgumentError, match="layer 0: a gradient of sample 2 is not finite"):
        device.traces()
