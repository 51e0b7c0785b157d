"""msp.torch.calibration: causal_lm_loss, fisher_traces and activation_norms on tiny causal LMs built
here.

Reference traces: for every sample, the loss (next-token cross-entropy written out in this file) is
differentiated with ``torch.autograd.grad`` and the squared gradients are summed in float64; the
trace is their mean over samples. The memory property (one layer's gradient at a time) is checked
by the order of gradient hooks, not by timing or allocator statistics. Reference activation norms:
the layer inputs recomputed by hand in float64.
"""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import msp  # noqa: E402
from msp.torch import activation_norms, causal_lm_loss, fisher_traces, linear_layers  # noqa: E402
from torch_models import BLOCK_DIM, MLP_DIM as DIM, MLP_VOCAB as VOCAB, BlockLM, MlpLM as TinyLM  # noqa: E402
from torch_models import block_batches  # noqa: E402
from torch_models import mlp_batches as batches  # noqa: E402


def reference_traces(model, names, samples, per_parameter=False):
    """Tr(F_l) by torch.autograd.grad per sample, in float64."""
    model.eval()
    weights = [model.get_submodule(n).weight for n in names]
    totals = [0.0] * len(names)
    for ids in samples:
        logits = model(ids).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        grads = torch.autograd.grad(loss, weights)
        for i, g in enumerate(grads):
            totals[i] += float((g.double() ** 2).sum())
    return {
        n: totals[i] / len(samples) / (weights[i].numel() if per_parameter else 1) for i, n in enumerate(names)
    }


def assert_close(got, expected, tol=1e-5):
    assert list(got) == list(expected)
    for name in expected:
        assert abs(got[name] - expected[name]) <= tol * abs(expected[name]), name


# --- fisher_traces ------------------------------------------------------------------------------


@pytest.mark.parametrize("per_parameter", [False, True])
def test_traces_match_autograd_reference(per_parameter):
    model = TinyLM()
    layers = linear_layers(model, ignore=[])
    samples = batches(5)
    got = fisher_traces(model, layers, samples, per_parameter=per_parameter, progress=False)
    assert all(isinstance(v, float) and v > 0 for v in got.values())
    assert_close(got, reference_traces(model, list(layers), samples, per_parameter))


def test_a_batch_of_rows_counts_as_rows_samples_unless_per_sample_is_false():
    model = TinyLM(seed=2)
    layers = linear_layers(model)
    rows = batches(2, seed=3, rows=3)
    singles = [r[i : i + 1] for r in rows for i in range(3)]
    expected = reference_traces(model, list(layers), singles)
    assert_close(fisher_traces(model, layers, rows, progress=False), expected)
    whole = fisher_traces(model, layers, rows, per_sample=False, progress=False)
    assert_close(whole, reference_traces(model, list(layers), rows))


def test_dict_batches_with_attention_mask_and_labels():
    model = TinyLM(seed=4)
    layers = linear_layers(model)
    ids = batches(1, seed=5, rows=2)[0]
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    got = fisher_traces(model, layers, [{"input_ids": ids, "attention_mask": mask}], progress=False)

    def loss_of(i):
        logits = model(ids[i : i + 1]).logits[:, :-1]
        target = ids[i : i + 1, 1:].masked_fill(mask[i : i + 1, 1:] == 0, -100)
        return F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100)

    model.eval()  # fisher_traces runs in eval mode (no dropout) and restored training mode after
    weights = [m.weight for m in layers.values()]
    expected = dict.fromkeys(layers, 0.0)
    for i in range(2):
        for name, g in zip(layers, torch.autograd.grad(loss_of(i), weights)):
            expected[name] += float((g.double() ** 2).sum()) / 2
    assert_close(got, expected)
    labels = ids.clone()
    labels[:, :4] = -100  # "labels" replace the ids as targets and are not passed to the model
    with_labels = fisher_traces(model, layers, [{"input_ids": ids, "labels": labels}], progress=False)
    assert list(with_labels) == list(layers) and with_labels != got


def test_custom_loss_fn_receives_model_and_batch():
    model = TinyLM(seed=6)
    layers = {"fc2": model.fc2}
    seen = []

    def loss_fn(m, batch):
        seen.append(batch["x"].shape)
        return (m.fc2(batch["x"]) ** 2).sum()

    x = torch.randn(1, 2 * DIM, generator=torch.Generator().manual_seed(0))
    got = fisher_traces(model, layers, [{"x": x}], loss_fn=loss_fn, progress=False)
    (g,) = torch.autograd.grad((model.fc2(x) ** 2).sum(), [model.fc2.weight])
    assert seen == [torch.Size([1, 2 * DIM])]
    assert abs(got["fc2"] - float((g.double() ** 2).sum())) <= 1e-5 * got["fc2"]


def test_at_most_one_tracked_gradient_exists_at_any_time():
    model = TinyLM(seed=7)
    layers = linear_layers(model, ignore=[])
    params = [m.weight for m in layers.values()]
    alive, calls = [], []

    def spy(index):
        def hook(param):
            # Runs before msp's hook (registered earlier): this layer's gradient exists, and every
            # other tracked gradient must already have been handed over and freed.
            calls.append(index)
            alive.append(sum(p.grad is not None for p in params))

        return hook

    handles = [p.register_post_accumulate_grad_hook(spy(i)) for i, p in enumerate(params)]
    try:
        fisher_traces(model, layers, batches(3), progress=False)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 3 * len(params)
    assert max(alive) == 1 and min(alive) == 1
    # Each backward hands over the layers in reverse order of use, one at a time.
    assert calls[: len(params)] == [3, 2, 1, 0]


def snapshot(model):
    return (
        [(n, m.training) for n, m in model.named_modules()],
        [(n, p.requires_grad, p.grad) for n, p in model.named_parameters()],
    )


def prepare_state(model):
    """A mixed state: training mode except one module, a frozen embedding, existing gradients."""
    model.train()
    model.block[1].eval()
    model.embed.weight.requires_grad_(False)
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 7.0)
    model.lm_head.bias.grad = torch.ones_like(model.lm_head.bias)


def assert_state(model, before):
    modes, params = snapshot(model)
    assert modes == before[0]
    for (name, flag, grad), (_, flag0, grad0) in zip(params, before[1]):
        assert flag == flag0, name
        assert grad is grad0, name  # the very same tensor object (or None)
    assert torch.equal(model.fc1.weight.grad, torch.full_like(model.fc1.weight, 7.0))


def test_state_is_restored_and_dropout_is_off_during_the_run():
    model = TinyLM(seed=8)
    prepare_state(model)
    before = snapshot(model)
    layers = linear_layers(model)
    got = fisher_traces(model, layers, batches(2), progress=False)
    assert_state(model, before)
    # Dropout was off: the result equals the eval-mode reference (which switches the model to eval).
    assert_close(got, reference_traces(model, list(layers), batches(2)))


def test_an_exception_from_loss_fn_propagates_and_state_is_restored():
    model = TinyLM(seed=9)
    prepare_state(model)
    before = snapshot(model)
    layers = linear_layers(model)

    class Stop(Exception):
        pass

    calls = []

    def loss_fn(m, ids):
        calls.append(1)
        if len(calls) == 2:
            raise Stop("second sample")
        return causal_lm_loss(m, ids)

    with pytest.raises(Stop, match="second sample"):
        fisher_traces(model, layers, batches(3), loss_fn=loss_fn, progress=False)
    assert_state(model, before)
    # The hooks are gone: a plain backward now keeps the gradients.
    model.zero_grad(set_to_none=True)
    causal_lm_loss(model, batches(1)[0]).backward()
    assert all(m.weight.grad is not None for m in layers.values())


def test_a_non_finite_loss_raises_and_restores_state():
    model = TinyLM(seed=10)
    prepare_state(model)
    before = snapshot(model)
    with torch.no_grad():
        model.lm_head.bias[0] = float("inf")
    with pytest.raises(ValueError, match="the loss of sample 0 is"):
        fisher_traces(model, linear_layers(model), batches(1), progress=False)
    assert_state(model, before)


def test_a_nan_gradient_names_the_layer_and_restores_state():
    model = TinyLM(seed=11)
    prepare_state(model)
    before = snapshot(model)
    layers = {"fc1": model.fc1, "fc2": model.fc2}

    def loss_fn(m, ids):
        # A finite loss whose backward turns the gradient at fc2's output into NaN.
        out = m.fc2(torch.tanh(m.fc1(m.embed(ids))))
        out.register_hook(lambda g: torch.full_like(g, float("nan")))
        return out.sum()

    with pytest.raises(msp.InvalidArgumentError, match=r"layer 1: grad\[0\] \(nan\) is not finite"):
        fisher_traces(model, layers, batches(1), loss_fn=loss_fn, progress=False)
    assert_state(model, before)


def test_float64_model_gradients_are_summed_in_float32_then_double():
    model = TinyLM(seed=12, dtype=torch.float64)
    layers = linear_layers(model)
    got = fisher_traces(model, layers, batches(2), progress=False)
    assert_close(got, reference_traces(model, list(layers), batches(2)), tol=1e-6)


def test_bad_arguments():
    model = TinyLM()
    layers = linear_layers(model)
    with pytest.raises(ValueError, match="layers is empty"):
        fisher_traces(model, {}, batches(1), progress=False)
    with pytest.raises(ValueError, match="no calibration sample"):
        fisher_traces(model, layers, [], progress=False)
    with pytest.raises(ValueError, match="share one weight"):
        fisher_traces(model, {"a": model.fc1, "b": model.fc1}, batches(1), progress=False)
    with pytest.raises(ValueError, match="no .weight"):
        fisher_traces(model, {"act": nn.Tanh()}, batches(1), progress=False)
    with pytest.raises(ValueError, match="scalar"):
        fisher_traces(model, layers, batches(1), loss_fn=lambda m, b: m(b).logits, progress=False)
    with pytest.raises(TypeError, match="loss_fn"):
        fisher_traces(model, layers, [("not", "ids")], progress=False)


def test_progress_line_on_stderr_only_when_enabled(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)

    model = TinyLM()
    layers = linear_layers(model)
    fisher_traces(model, layers, batches(2), progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    fisher_traces(model, layers, batches(2), progress=True)
    err = capsys.readouterr().err
    assert "fisher: 2/2 batches" in err


# --- activation_norms -----------------------------------------------------------------------------


def test_activation_norms_match_reference():
    model = BlockLM(seed=7)
    layers = linear_layers(model)
    data = block_batches(3, rows=2) + [{"input_ids": block_batches(1, seed=9, rows=3)[0]}]
    model.train()
    norms = activation_norms(model, layers, data)
    assert model.training  # mode restored
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in layers.items()}
    with torch.no_grad():
        for batch in data:
            ids = batch["input_ids"] if isinstance(batch, dict) else batch
            inputs, _ = model.block_inputs(ids)
            for name, x in inputs.items():
                sums[name] += (x.double().reshape(-1, x.shape[-1]) ** 2).sum(0)
    assert list(norms) == list(layers)
    for name, norm in norms.items():
        assert norm.dtype == torch.float32 and norm.shape == (layers[name].in_features,)
        torch.testing.assert_close(norm, sums[name].sqrt().float(), rtol=1e-6, atol=0)
    for module in model.modules():
        assert not module._forward_pre_hooks


def test_activation_norms_reject_layers_that_never_run():
    model = BlockLM()
    layers = linear_layers(model)
    layers["spare"] = nn.Linear(BLOCK_DIM, BLOCK_DIM)
    with pytest.raises(ValueError, match="never ran.*spare"):
        activation_norms(model, layers, block_batches(1))
    with pytest.raises(ValueError, match="empty"):
        activation_norms(model, linear_layers(model), [])
