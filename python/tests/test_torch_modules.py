"""Any nn.Module: calibration forms, per-sample splitting of tensors, tuples and dicts, and
fisher_traces / activation_norms / prune / kl_to_dense on an nn.Sequential classifier with
``(x, y)`` batches and a custom loss.

References are computed here: per-sample gradients by ``torch.autograd.grad`` summed in float64,
every linear's input recomputed by hand for the norms, and the KL divergence of the softmaxes.
"""

import collections
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from msp.torch import (  # noqa: E402
    activation_norms,
    apply_plan,
    fisher_traces,
    kl_to_dense,
    linear_layers,
    prune,
    reference_logits,
)
from msp.torch.batches import BATCH_SIZE, calibration_batches, split_samples  # noqa: E402
from torch_models import BlockLM, assert_same, block_batches, snapshot  # noqa: E402

IN, CLASSES = 16, 5


def classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, CLASSES))


def xy_batches(n=3, rows=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, IN, generator=g), torch.randint(0, CLASSES, (rows,), generator=g)) for _ in range(n)]


def smoothed_loss(model, batch):
    """A custom loss: label-smoothed cross-entropy of an (x, y) batch."""
    x, y = batch
    return F.cross_entropy(model(x), y, label_smoothing=0.1)


def forward(model, batch):
    return model(batch[0])


def reference_traces(model, batches, per_sample=True):
    weights = [model[i].weight for i in (0, 2, 4)]
    samples = [(x[i : i + 1], y[i : i + 1]) for x, y in batches for i in range(len(y))] if per_sample else batches
    totals = np.zeros(3)
    for sample in samples:
        grads = torch.autograd.grad(smoothed_loss(model, sample), weights)
        totals += [float((g.double() ** 2).sum()) for g in grads]
    return totals / len(samples)


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_fisher_traces_of_a_classifier_with_a_custom_loss(per_sample, kernels):
    model, data = classifier(), xy_batches()
    layers = linear_layers(model)
    assert list(layers) == ["0", "2", "4"]
    got = fisher_traces(model, layers, data, smoothed_loss, per_sample=per_sample, kernels=kernels, progress=False)
    np.testing.assert_allclose(list(got.values()), reference_traces(model, data, per_sample), rtol=1e-12)
    loader = DataLoader(TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])), batch_size=4)
    from_loader = fisher_traces(model, layers, loader, smoothed_loss, per_sample=per_sample, kernels=kernels,
                                progress=False)  # a DataLoader yields [x, y] lists: split alike
    assert from_loader == got


def reference_norms(model, batches):
    inputs = {"0": [], "2": [], "4": []}
    with torch.no_grad():
        for x, _ in batches:
            h0 = x
            h1 = torch.relu(model[0](h0))
            h2 = torch.tanh(model[2](h1))
            for name, h in zip(inputs, (h0, h1, h2)):
                inputs[name].append(h.double())
    return {name: torch.cat(rows).pow(2).sum(0).sqrt() for name, rows in inputs.items()}


def test_activation_norms_of_a_classifier_with_forward_fn():
    model, data = classifier(seed=2), xy_batches(seed=3)
    got = activation_norms(model, linear_layers(model), data, forward_fn=forward)
    expected = reference_norms(model, data)
    for name, norm in got.items():
        torch.testing.assert_close(norm, expected[name].float(), rtol=1e-6, atol=0)
    with pytest.raises(TypeError):  # without forward_fn an (x, y) batch is model(x, y)
        activation_norms(model, linear_layers(model), data)


def reference_kl(dense, pruned, batches):
    total, count = 0.0, 0
    with torch.no_grad():
        for x, _ in batches:
            logp = dense(x).double().log_softmax(-1)
            logq = pruned(x).double().log_softmax(-1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += x.shape[0]
    return total / count


def test_kl_to_dense_with_forward_fn():
    dense, model, data = classifier(seed=4), classifier(seed=4), xy_batches(seed=5)
    reference = reference_logits(model, data, forward_fn=forward)
    assert reference[0].shape == (4, CLASSES)
    assert kl_to_dense(model, data, reference, forward_fn=forward) == pytest.approx(0.0, abs=1e-7)
    apply_plan(linear_layers(model), ["50%"] * 3)
    expected = reference_kl(dense, model, data)
    assert expected > 1e-4
    assert kl_to_dense(model, data, reference, forward_fn=forward) == pytest.approx(expected, rel=1e-5)
    top = reference_logits(dense, data, forward_fn=forward, top_k=CLASSES)
    assert kl_to_dense(model, data, top, forward_fn=forward) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_prune_a_classifier_with_xy_batches(kernels):
    model, data = classifier(seed=6), xy_batches(n=4, seed=7)
    dense = copy.deepcopy(model)
    result = prune(model, data, target=0.5, structure="unstructured", pruner="wanda", loss_fn=smoothed_loss,
                   forward_fn=forward, kernels=kernels, generations=2, offspring=4, progress=False)
    assert abs(result.average_sparsity - 0.5) <= 0.001 and result.names == ["0", "2", "4"]
    # The model holds the plan pruned with Wanda's norms of the dense model, computed here by hand.
    expected = copy.deepcopy(dense)
    apply_plan(linear_layers(expected), result, "wanda", reference_norms(dense, data))
    assert_same(model, snapshot(expected))
    # Its fitness is the KL divergence to the dense model on the first two calibration batches.
    assert result.fitness == pytest.approx(reference_kl(dense, model, data[:2]), rel=1e-3)  # float32 softmaxes
    with pytest.raises(ValueError, match="perplexity.*causal LMs"):
        prune(classifier(), data, fitness="perplexity", forward_fn=forward, loss_fn=smoothed_loss, progress=False)


# --- calibration forms ------------------------------------------------------------------------------


def test_one_tensor_is_cut_into_batches():
    ids = block_batches(1, rows=20)[0]
    batches = calibration_batches(ids)
    assert [b.shape[0] for b in batches] == [BATCH_SIZE, BATCH_SIZE, 20 - 2 * BATCH_SIZE]
    assert torch.equal(torch.cat(batches), ids)
    model = BlockLM(seed=8)
    layers = linear_layers(model)
    as_list = list(ids.split(BATCH_SIZE))
    for kernels in ("native", "torch"):
        assert fisher_traces(model, layers, ids, kernels=kernels, progress=False) == \
            fisher_traces(model, layers, as_list, kernels=kernels, progress=False)
    norms, listed = activation_norms(model, layers, ids), activation_norms(model, layers, as_list)
    assert all(torch.equal(norms[n], listed[n]) for n in norms)
    plan = prune(BlockLM(seed=8), ids, target=0.5, method="prior", progress=False)
    assert plan == prune(BlockLM(seed=8), as_list, target=0.5, method="prior", progress=False)


def test_lists_and_iterables_of_batches_are_taken_as_they_are():
    batches = block_batches(3)
    assert calibration_batches(batches) is batches
    generator = (b for b in batches)
    assert calibration_batches(generator) is generator
    model = BlockLM(seed=9)
    layers = linear_layers(model)
    assert fisher_traces(model, layers, iter(batches), progress=False) == fisher_traces(model, layers, batches,
                                                                                         progress=False)


@pytest.mark.parametrize("bad, error, words", [
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "got a dict (one batch: wrap it in a list)"),
    ((torch.zeros(2, 3), torch.zeros(2)), TypeError, "got a tuple (one batch: wrap it in a list)"),
    ("some text", TypeError, "got a str"),
    (np.zeros((4, 3), dtype=np.int64), TypeError, "got a ndarray"),
    (nn.Linear(2, 2), TypeError, "got a Linear"),
    (None, TypeError, "got a NoneType"),
    (torch.zeros(7, dtype=torch.long), ValueError, "one sequence [T] is ids[None]"),
    (torch.zeros(0, 5, dtype=torch.long), ValueError, "empty tensor"),
])
def test_a_wrong_calibration_object_names_the_accepted_forms(bad, error, words):
    model = BlockLM()
    layers = linear_layers(model)
    for call in (lambda: fisher_traces(model, layers, bad, progress=False),
                 lambda: activation_norms(model, layers, bad),
                 lambda: prune(model, bad, method="prior", progress=False)):
        with pytest.raises(error) as caught:
            call()
        message = str(caught.value)
        assert words in message
        if error is TypeError or "ids[None]" in words:
            assert "a list of batches" in message and "one tensor [N, ...]" in message and "DataLoader" in message


# --- per-sample splitting ---------------------------------------------------------------------------


def test_split_samples_cuts_tensors_tuples_and_dicts_alike():
    x, y = torch.arange(12.0).reshape(3, 4), torch.tensor([0, 1, 2])
    extra = torch.ones(5)  # another leading size: shared by every sample
    rows = split_samples(x)
    assert len(rows) == 3 and all(torch.equal(r, x[i : i + 1]) for i, r in enumerate(rows))
    pairs = split_samples((x, y, "tag"))
    assert [type(p) for p in pairs] == [tuple] * 3
    for i, (xi, yi, tag) in enumerate(pairs):
        assert torch.equal(xi, x[i : i + 1]) and torch.equal(yi, y[i : i + 1]) and tag == "tag"
    lists = split_samples([x, y])
    assert [type(p) for p in lists] == [list] * 3 and torch.equal(lists[2][1], y[2:3])
    dicts = split_samples({"input_ids": x, "labels": y, "extra": extra, "flag": True})
    for i, d in enumerate(dicts):
        assert torch.equal(d["input_ids"], x[i : i + 1]) and torch.equal(d["labels"], y[i : i + 1])
        assert d["extra"] is extra and d["flag"] is True
    nested = split_samples({"inputs": (x, {"mask": y})})
    assert len(nested) == 3 and torch.equal(nested[1]["inputs"][1]["mask"], y[1:2])
    Pair = collections.namedtuple("Pair", "x y")
    named = split_samples(Pair(x, y))
    assert isinstance(named[0], Pair) and torch.equal(named[0].y, y[:1])
    one, untouched, scalar = x[:1], ("no", "tensors"), torch.tensor(3.0)
    assert split_samples(one)[0] is one and split_samples(untouched)[0] is untouched
    assert split_samples(scalar)[0] is scalar and len(split_samples(scalar)) == 1
