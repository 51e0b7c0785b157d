"""msp.torch's Pruner, apply_plan, activation_norms, block_groups, prune and the fitness helpers,
on tiny models built here (no downloads).

References are written out in this file: N:M and per-row top-k masks from a stable numpy sort of
``|w| * col_scale`` (score descending, index ascending: the first ones are kept), activation norms
from the layer inputs recomputed by hand in float64, perplexity and KL from full float64 softmaxes.
"""

import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from msp.levels import Level, nm_levels, ratio_levels  # noqa: E402
from msp.plans import Plan  # noqa: E402
from msp.planner import plan as make_plan  # noqa: E402
from msp.torch import (  # noqa: E402  (the public names, re-exported by msp.torch)
    Pruner,
    TopK,
    activation_norms,
    apply_plan,
    block_groups,
    kl_to_dense,
    linear_layers,
    perplexity,
    prune,
    reference_logits,
)

VOCAB, DIM, T = 41, 16, 10


class TinyLM(nn.Module):
    """Embedding, two residual blocks of three linears each, an output head; ``.logits`` like HF."""

    def __init__(self, seed=0, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {"up": nn.Linear(DIM, 2 * DIM), "down": nn.Linear(2 * DIM, DIM, bias=False), "mix": nn.Linear(DIM, DIM)}
            )
            for _ in range(2)
        )
        self.lm_head = nn.Linear(DIM, VOCAB)
        self.to(dtype)

    def block_inputs(self, input_ids):
        """Every linear's input, computed by hand: {name: tensor [..., in_features]}."""
        inputs = {}
        h = self.embed(input_ids)
        for i, block in enumerate(self.layers):
            inputs[f"layers.{i}.up"] = h
            u = torch.tanh(block["up"](h))
            inputs[f"layers.{i}.down"] = u
            h = h + block["down"](u)
            inputs[f"layers.{i}.mix"] = h
            h = torch.tanh(block["mix"](h))
        return inputs, h

    def forward(self, input_ids, attention_mask=None):
        _, h = self.block_inputs(input_ids)
        return types.SimpleNamespace(logits=self.lm_head(h))


def batches(n, seed=1, rows=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (rows, T), generator=g) for _ in range(n)]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bits(t):
    return t.detach().contiguous().view(torch.uint8)


def assert_same(model, saved):
    """Bit-identical (so -0.0 differs from +0.0)."""
    for k, v in model.state_dict().items():
        assert v.dtype == saved[k].dtype and v.shape == saved[k].shape, k
        assert torch.equal(bits(v), bits(saved[k])), k


def random_norms(layers, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.in_features, generator=g) * 3 + 0.1 for n, m in layers.items()}


# --- references ------------------------------------------------------------------------------------


def order_desc(scores):
    """Indices of a 1-D score array, score descending then index ascending (a stable sort)."""
    return np.argsort(-scores, kind="stable")


def reference_nm(w, n, m, scale):
    w = w.detach().double().numpy()
    score = np.abs(w) * (1.0 if scale is None else scale.double().numpy()[None, :])
    keep = np.zeros(w.shape, dtype=bool)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], m):
            keep[r, g + order_desc(score[r, g : g + m])[:n]] = True
    return keep


def reference_topk_row(w, sparsity, scale):
    w = w.detach().double().numpy()
    score = np.abs(w) * (1.0 if scale is None else scale.double().numpy()[None, :])
    pruned = math.floor(sparsity * w.shape[1])
    keep = np.zeros(w.shape, dtype=bool)
    for r in range(w.shape[0]):
        keep[r, order_desc(score[r])[: w.shape[1] - pruned]] = True
    return keep


# --- Pruner ----------------------------------------------------------------------------------------

MIXED = ["8:8", "2:8", "70%", "1:8", "0%", "5:8"]  # one level per layer of TinyLM


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_apply_then_restore_is_bit_identical(dtype, method):
    model = TinyLM(dtype=dtype)
    layers = linear_layers(model)
    saved = snapshot(model)
    norms = random_norms(layers) if method == "wanda" else None
    pruner = Pruner(layers, method, norms)
    for plan in (MIXED, ["2:8"] * 6, ["90%"] * 6, {n: "4:8" for n in layers}):
        pruner.apply(plan)
        assert any(not torch.equal(v, saved[k]) for k, v in model.state_dict().items())
        pruner.restore()
        assert_same(model, saved)
    with pruner.applied(MIXED):
        pass
    assert_same(model, saved)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_apply_gives_planned_levels_exactly(method):
    model = TinyLM(seed=5)
    layers = linear_layers(model)
    dense = {n: m.weight.detach().clone() for n, m in layers.items()}
    norms = random_norms(layers) if method == "wanda" else None
    Pruner(layers, method, norms).apply(MIXED)
    for (name, module), text in zip(layers.items(), MIXED):
        level = Level.parse(text)
        scale = None if norms is None else norms[name]
        w = module.weight.detach()
        if level.m:
            keep = reference_nm(dense[name], level.n, level.m, scale)
            groups = (w != 0).reshape(w.shape[0], -1, level.m).sum(-1)
            assert (groups == level.n).all(), name  # the N:M structure, every group
        else:
            keep = reference_topk_row(dense[name], level.sparsity, scale)
            zeros = (w == 0).sum(1)
            assert (zeros == math.floor(level.sparsity * w.shape[1])).all(), name
        expected = torch.where(torch.from_numpy(keep), dense[name], torch.zeros_like(w))
        assert torch.equal(w, expected), name
        planned = 1 - keep.mean()
        assert abs(float((w == 0).float().mean()) - planned) < 1e-12


@pytest.mark.parametrize("cache_bytes", [0, 5000, 2 << 30])
def test_apply_depends_only_on_the_plan(cache_bytes):
    """Incremental apply (layers left in place when their level is unchanged) and cached pruned
    layers (none, a few with eviction, all) give what a fresh apply gives."""
    model, fresh = TinyLM(seed=2), TinyLM(seed=2)
    layers = linear_layers(model)
    pruner = Pruner(layers, "wanda", random_norms(layers), cache_bytes=cache_bytes)
    plans = [MIXED, ["2:8"] * 6, ["2:8"] * 3 + ["3:8"] * 3, MIXED[::-1], ["8:8"] * 6, MIXED]
    for plan in plans:
        pruner.apply(plan)
        reference = TinyLM(seed=2)
        fresh_layers = linear_layers(reference)
        Pruner(fresh_layers, "wanda", random_norms(fresh_layers)).apply(plan, incremental=False)
        assert_same(model, snapshot(reference))
    # A write the Pruner did not make (seen by the version counter) is undone by the next apply.
    with torch.no_grad():
        layers["layers.0.down"].weight.add_(1.0)
    pruner.apply(plans[-1])
    reference = TinyLM(seed=2)
    Pruner(linear_layers(reference), "wanda", random_norms(linear_layers(reference))).apply(plans[-1])
    assert_same(model, snapshot(reference))
    assert pruner.cached_bytes <= cache_bytes
    pruner.restore()
    assert_same(model, snapshot(fresh))


def test_apply_accepts_plans_dicts_and_lists():
    model = TinyLM()
    layers = linear_layers(model)
    sizes = [m.weight.numel() for m in layers.values()]
    levels = nm_levels(8)
    plan = Plan([6, 5, 6, 4, 7, 6], levels, sizes)
    pruner = Pruner(layers)
    pruner.apply(plan)
    by_plan = snapshot(model)
    pruner.restore()
    pruner.apply(dict(zip(layers, [str(lv) for lv in plan.layer_levels])))
    assert_same(model, by_plan)
    pruner.apply([(lv.n, lv.m) for lv in plan.layer_levels])
    assert_same(model, by_plan)
    assert pruner.sizes == sizes and pruner.names == list(layers)


def test_apply_plan_matches_pruner_and_returns_masks():
    model, other = TinyLM(seed=4), TinyLM(seed=4)
    dense = snapshot(other)
    layers = linear_layers(model)
    norms = random_norms(layers)
    Pruner(layers, "wanda", norms).apply(MIXED)
    masks = apply_plan(linear_layers(other), MIXED, method="wanda", norms=norms, return_masks=True)
    assert_same(other, snapshot(model))
    for name, module in linear_layers(other).items():
        mask, w = masks[name], module.weight.detach()
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert torch.equal(w, torch.where(mask, dense[name + ".weight"], torch.zeros_like(w)))
    assert apply_plan(linear_layers(TinyLM()), ["1:8"] * 6) is None


# --- bad input: raised before any weight is written -------------------------------------------------


def bad_cases():
    model = TinyLM()
    layers = linear_layers(model)
    sizes = [m.weight.numel() for m in layers.values()]
    names = list(layers)
    return [
        ("too few layers", MIXED[:5], "5 levels but 6 layers"),
        ("plan of another model", Plan([1] * 5, nm_levels(8), sizes[:5]), "5 layers but 6"),
        ("sizes differ", Plan([1] * 6, nm_levels(8), sizes[::-1]), "parameters"),
        ("unknown name", {**{n: "2:8" for n in names[1:]}, "nope": "2:8"}, "names do not match"),
        ("missing name", {n: "2:8" for n in names[:-1]}, "names do not match"),
        ("M does not divide in_features", ["2:8"] * 5 + ["2:32"], "not divisible by M = 32"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_plans_raise_before_any_write(case):
    model = TinyLM()
    layers = linear_layers(model)
    saved = snapshot(model)
    pruner = Pruner(layers, "wanda", random_norms(layers))
    label, plan, message = bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        pruner.apply(plan)
    assert_same(model, saved)
    with pytest.raises(ValueError, match=message):
        apply_plan(layers, plan)
    assert_same(model, saved)
    # After a pruned state, a bad plan leaves that state as it was.
    pruner.apply(MIXED)
    pruned = snapshot(model)
    with pytest.raises(ValueError, match=message):
        pruner.apply(plan)
    assert_same(model, pruned)


def test_non_contiguous_weight_raises_before_any_write():
    model = TinyLM()
    layers = linear_layers(model)
    pruner = Pruner(layers)
    target = layers["layers.1.mix"]
    target.weight = nn.Parameter(target.weight.detach().t().contiguous().t())  # same values, transposed strides
    saved = snapshot(model)
    with pytest.raises(ValueError, match="replaced"):
        pruner.apply(MIXED)
    with pytest.raises(ValueError, match="non-contiguous"):
        Pruner(layers)
    with pytest.raises(ValueError, match="non-contiguous"):
        apply_plan(layers, MIXED)
    assert_same(model, saved)


def test_weight_off_the_cpu_raises_before_any_write():
    model = TinyLM()
    layers = linear_layers(model)
    layers["layers.1.mix"].to("meta")  # stands in for a CUDA weight: the check is on device.type
    saved = {n: m.weight.detach().clone() for n, m in layers.items() if n != "layers.1.mix"}
    with pytest.raises(ValueError, match="prunes CPU weights"):
        Pruner(layers)
    with pytest.raises(ValueError, match="prunes CPU weights"):
        apply_plan(layers, MIXED)
    for name, w in saved.items():
        assert torch.equal(layers[name].weight, w)


def test_bad_pruner_arguments():
    model = TinyLM()
    layers = linear_layers(model)
    with pytest.raises(ValueError, match="needs norms"):
        Pruner(layers, "wanda")
    with pytest.raises(ValueError, match="does not use them"):
        Pruner(layers, "magnitude", random_norms(layers))
    with pytest.raises(ValueError, match="method"):
        Pruner(layers, "sparsegpt")
    bad = random_norms(layers)
    bad["layers.0.up"] = torch.ones(DIM + 1)
    with pytest.raises(ValueError, match="in_features"):
        Pruner(layers, "wanda", bad)
    with torch.no_grad():
        layers["layers.0.mix"].weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        Pruner(layers)
    shared = {"a": layers["layers.0.up"], "b": layers["layers.0.up"]}
    with pytest.raises(ValueError, match="share one weight"):
        Pruner(shared)


# --- statistics ------------------------------------------------------------------------------------


def test_activation_norms_match_reference():
    model = TinyLM(seed=7)
    layers = linear_layers(model)
    data = batches(3, rows=2) + [{"input_ids": batches(1, seed=9, rows=3)[0]}]
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
    model = TinyLM()
    layers = linear_layers(model)
    layers["spare"] = nn.Linear(DIM, DIM)
    with pytest.raises(ValueError, match="never ran.*spare"):
        activation_norms(model, layers, batches(1))
    with pytest.raises(ValueError, match="empty"):
        activation_norms(model, linear_layers(model), [])


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
    assert block_groups(linear_layers(TinyLM())) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(TypeError):
        block_groups("model.layers.0.q")


# --- fitness helpers -------------------------------------------------------------------------------


def reference_perplexity(model, data):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in data:
            logits = model(ids).logits[:, :-1].double()
            total += float(F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def test_perplexity_matches_reference_and_chunking():
    model = TinyLM(seed=1)
    data = batches(3)
    expected = reference_perplexity(model, data)
    assert perplexity(model, data) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, data, chunk_tokens=3) == pytest.approx(expected, rel=1e-5)
    masked = [{"input_ids": d, "attention_mask": torch.ones_like(d)} for d in data]
    masked[0]["attention_mask"][:, -4:] = 0  # padding at the end is not predicted
    trimmed = [data[0][:, :-4]] + data[1:]
    got = perplexity(model, masked)
    total = sum(math.log(reference_perplexity(model, [d])) * d[:, 1:].numel() for d in trimmed)
    assert got == pytest.approx(math.exp(total / sum(d[:, 1:].numel() for d in trimmed)), rel=1e-5)


def reference_kl(dense, pruned, data):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in data:
            logp = dense(ids).logits.double().log_softmax(-1)
            logq = pruned(ids).logits.double().log_softmax(-1)
            total += float((logp.exp() * (logp - logq)).sum())
            count += ids.numel()
    return total / count


def test_kl_to_dense_full_and_top_k():
    dense, model = TinyLM(seed=3), TinyLM(seed=3)
    data = batches(3)
    full = reference_logits(model, data)
    top = reference_logits(model, data, top_k=5, chunk_tokens=7)
    assert isinstance(top[0], TopK) and top[0][0].shape == (2, T, 5)
    assert kl_to_dense(model, data, full) == pytest.approx(0.0, abs=1e-6)
    assert kl_to_dense(model, data, top) == pytest.approx(0.0, abs=1e-6)
    layers = linear_layers(model)
    Pruner(layers).apply(["2:8"] * 6)
    expected = reference_kl(dense, model, data)
    assert expected > 1e-3
    assert kl_to_dense(model, data, full) == pytest.approx(expected, rel=1e-4)
    assert kl_to_dense(model, data, full, chunk_tokens=3) == pytest.approx(expected, rel=1e-4)
    raw = [dense(d).logits.detach() for d in data]  # raw logits are accepted too
    assert kl_to_dense(model, data, raw) == pytest.approx(expected, rel=1e-4)
    everything = reference_logits(dense, data, top_k=VOCAB)
    assert kl_to_dense(model, data, everything) == pytest.approx(expected, rel=1e-4)
    coarse = kl_to_dense(model, data, top)
    assert 0 < coarse <= expected * (1 + 1e-5)  # coarsening never increases a KL divergence
    pairs = [(log_probs, indices) for log_probs, indices, _ in top]  # without the stored rest mass
    assert kl_to_dense(model, data, pairs) == pytest.approx(coarse, rel=1e-4)
    with pytest.raises(ValueError, match="references"):
        kl_to_dense(model, data, full[:2])


# --- prune and fitness exceptions --------------------------------------------------------------------


class Boom(Exception):
    pass


def test_exception_in_fitness_propagates_and_leaves_the_model_dense():
    model = TinyLM(seed=6)
    saved = snapshot(model)
    calls = []

    def fitness(m):
        calls.append(1)
        if len(calls) == 3:
            raise Boom("from the user's fitness")
        return float(len(calls))

    with pytest.raises(Boom, match="user's fitness"):
        prune(model, batches(2), target=0.5, structure="N:8", fitness=fitness,
              search=dict(generations=3, offspring=4), progress=False)
    assert len(calls) == 3
    assert_same(model, saved)
    # The same through msp.plan with a Pruner-based fitness, KeyboardInterrupt included.
    layers = linear_layers(model)
    pruner = Pruner(layers)

    def interrupted(plan):
        pruner.apply(plan)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        try:
            make_plan(pruner.sizes, 0.5, nm_levels(8), fitness=interrupted, generations=2, progress=False)
        except BaseException:
            pruner.restore()
            raise
    assert_same(model, saved)


@pytest.mark.parametrize("structure,pruner,fitness", [("N:8", "wanda", "kl"), ("unstructured", "magnitude", "perplexity")])
def test_prune_end_to_end(structure, pruner, fitness):
    model = TinyLM(seed=8)
    data = batches(3)
    plan = prune(model, data, target=0.6, structure=structure, pruner=pruner, fitness=fitness,
                 search=dict(generations=2, offspring=4), progress=False)
    assert isinstance(plan, Plan) and plan.method == "search"
    assert abs(plan.average_sparsity - 0.6) <= 0.001 + 1e-12
    assert plan.fitness is not None and plan.evaluations > 0
    layers = linear_layers(model)
    # The model holds exactly the returned plan.
    reference = TinyLM(seed=8)
    ref_layers = linear_layers(reference)
    norms = activation_norms(reference, ref_layers, data) if pruner == "wanda" else None
    apply_plan(ref_layers, plan, method=pruner, norms=norms)
    assert_same(model, snapshot(reference))
    if structure == "N:8":
        for module, level in zip(layers.values(), plan.layer_levels):
            w = module.weight
            assert ((w != 0).reshape(w.shape[0], -1, 8).sum(-1) <= level.n).all()


def test_prune_keeps_layers_with_odd_in_features_dense():
    model = TinyLM(seed=9)
    layers = linear_layers(model)
    layers["odd"] = nn.Linear(12, DIM)  # in_features 12: no 1:8..7:8 level fits (and it never runs:
    traces = {n: 1.0 for n in layers}  # so the statistics are given, and "prior" needs no fitness)
    saved = layers["odd"].weight.detach().clone()
    plan = prune(model, batches(2), target=0.5, layers=layers, pruner="magnitude", sensitivity=traces,
                 method="prior", progress=False)
    assert plan.layer_levels[-1] == Level.nm(8, 8)
    assert torch.equal(layers["odd"].weight, saved)


def test_prune_rejects_bad_arguments_before_touching_the_model():
    model = TinyLM()
    saved = snapshot(model)
    for kwargs, error in [
        (dict(pruner="sparsegpt"), ValueError),
        (dict(structure="2:4"), ValueError),
        (dict(fitness="accuracy"), ValueError),
        (dict(search=dict(target=0.5)), ValueError),
        (dict(method="exact"), ValueError),
    ]:
        with pytest.raises(error):
            prune(model, batches(1), progress=False, **kwargs)
    assert_same(model, saved)
    assert ratio_levels([0.5])  # the level helpers stay importable next to msp.torch
