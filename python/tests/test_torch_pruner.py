"""msp.torch.pruner: the Pruner and apply_plan on tiny models built here (no downloads).

References are written out in this file: N:M and per-row top-k masks from a stable numpy sort of
``|w| * col_scale`` (score descending, index ascending: the first ones are kept).
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from msp.levels import Level, nm_levels  # noqa: E402
from msp.plans import Plan  # noqa: E402
from msp.torch import Pruner, apply_plan, linear_layers  # noqa: E402
from torch_models import BLOCK_DIM as DIM, BlockLM as TinyLM, assert_same, random_norms, snapshot  # noqa: E402


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
    named = Plan(plan.levels, levels, sizes, names=list(layers))
    pruner.restore()
    pruner.apply(named)
    assert_same(model, by_plan)
    assert pruner.sizes == sizes and pruner.names == list(layers)


def test_apply_plan_matches_pruner_and_returns_masks():
    model, other = TinyLM(seed=4), TinyLM(seed=4)
    dense = snapshot(other)
    layers = linear_layers(model)
    norms = random_norms(layers)
    Pruner(layers, "wanda", norms).apply(MIXED)
    masks = apply_plan(linear_layers(other), MIXED, pruner="wanda", norms=norms, return_masks=True)
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
        ("names of other layers", Plan([1] * 6, nm_levels(8), sizes, names=[names[1], names[0]] + names[2:]),
         "layer 0 is named 'layers.0.down' but the layer given there is 'layers.0.up'"),
    ]


@pytest.mark.parametrize("case", range(7))
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


def test_weights_the_kernels_cannot_prune_raise_before_any_write():
    model = TinyLM()
    layers = linear_layers(model)
    layers["layers.1.mix"].to("meta")  # off the CPU (the check is on device.type) and without data
    saved = {n: m.weight.detach().clone() for n, m in layers.items() if n != "layers.1.mix"}
    for kernels, message in [("native", "kernels='native' prunes CPU weights only"), ("auto", "meta device"),
                             ("torch", "meta device")]:
        with pytest.raises(ValueError, match=message):
            Pruner(layers, kernels=kernels)
        with pytest.raises(ValueError, match=message):
            apply_plan(layers, MIXED, kernels=kernels)
    for name, w in saved.items():
        assert torch.equal(layers[name].weight, w)
    with pytest.raises(ValueError, match="kernels must be one of 'auto', 'native', 'torch'"):
        Pruner(linear_layers(TinyLM()), kernels="cuda")
    with pytest.raises(ValueError, match="dense_copies must be 'device' or 'host'"):
        Pruner(linear_layers(TinyLM()), dense_copies="gpu")


def test_bad_pruner_arguments():
    model = TinyLM()
    layers = linear_layers(model)
    with pytest.raises(ValueError, match="needs norms"):
        Pruner(layers, "wanda")
    with pytest.raises(ValueError, match="does not use them"):
        Pruner(layers, "magnitude", random_norms(layers))
    with pytest.raises(ValueError, match="method"):
        Pruner(layers, "obs")
    with pytest.raises(ValueError, match="pruner.*criterion"):
        Pruner(layers, pruner="obs")
    with pytest.raises(ValueError, match="needs grams"):
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


# --- the criterion is pruner=; method= is its deprecated spelling ------------------------------------


def test_method_is_the_deprecated_spelling_of_pruner():
    layers_new, layers_old = linear_layers(TinyLM(seed=3)), linear_layers(TinyLM(seed=3))
    norms = random_norms(layers_new)
    Pruner(layers_new, pruner="wanda", norms=norms).apply(MIXED)
    with pytest.warns(DeprecationWarning, match=r"Pruner\(method=\.\.\.\) is deprecated; use pruner="):
        old = Pruner(layers_old, method="wanda", norms=norms)
    old.apply(MIXED)
    for (name, new), (_, kept) in zip(layers_new.items(), layers_old.items()):
        assert torch.equal(new.weight, kept.weight), name
    assert old.pruner == "wanda"
    with pytest.warns(DeprecationWarning, match=r"Pruner\.method is deprecated; use Pruner\.pruner"):
        assert old.method == "wanda"
    with pytest.raises(TypeError, match="give pruner= only"):
        Pruner(layers_old, pruner="wanda", norms=norms, method="wanda")


def test_apply_plan_takes_method_with_a_deprecation_warning():
    model, other = TinyLM(seed=4), TinyLM(seed=4)
    norms = random_norms(linear_layers(model))
    apply_plan(linear_layers(model), MIXED, pruner="wanda", norms=norms)
    with pytest.warns(DeprecationWarning, match=r"apply_plan\(method=\.\.\.\) is deprecated; use pruner="):
        apply_plan(linear_layers(other), MIXED, method="wanda", norms=norms)
    assert_same(other, snapshot(model))
    with pytest.raises(TypeError, match="give pruner= only"):
        apply_plan(linear_layers(other), MIXED, "wanda", norms, method="wanda")


def test_the_criterion_as_second_positional_argument_warns_nothing(recwarn):
    layers = linear_layers(TinyLM())
    Pruner(layers, "wanda", random_norms(layers))
    Pruner(layers, "magnitude")
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
