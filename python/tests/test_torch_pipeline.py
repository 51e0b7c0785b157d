"""msp.torch.pipeline: prune, the whole pipeline in one call, on tiny models built here: the model
ends up holding exactly the returned plan, and any failure leaves it dense."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from msp.levels import Level, nm_levels, ratio_levels  # noqa: E402
from msp.planner import plan as make_plan  # noqa: E402
from msp.plans import Plan  # noqa: E402
from msp import SearchSettings  # noqa: E402
from msp.torch import Pruner, activation_norms, apply_plan, linear_layers, prune  # noqa: E402
from torch_models import BLOCK_DIM as DIM, BlockLM as TinyLM, assert_same, block_batches as batches  # noqa: E402
from torch_models import snapshot  # noqa: E402


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
        prune(model, batches(2), target=0.5, structure="N:8", fitness=fitness, generations=3, offspring=4,
              progress=False)
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
                 generations=2, offspring=4, progress=False)
    assert isinstance(plan, Plan) and plan.method == "search"
    assert abs(plan.average_sparsity - 0.6) <= 0.001 + 1e-12
    assert plan.fitness is not None and plan.evaluations > 0
    layers = linear_layers(model)
    # The model holds exactly the returned plan.
    reference = TinyLM(seed=8)
    ref_layers = linear_layers(reference)
    norms = activation_norms(reference, ref_layers, data) if pruner == "wanda" else None
    apply_plan(ref_layers, plan, pruner=pruner, norms=norms)
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


@pytest.mark.filterwarnings("ignore:prune\\(search=:DeprecationWarning")
def test_prune_rejects_bad_arguments_before_touching_the_model():
    model = TinyLM()
    saved = snapshot(model)
    for kwargs, error in [
        (dict(pruner="obs"), ValueError),
        (dict(structure="2:4"), ValueError),
        (dict(fitness="accuracy"), ValueError),
        (dict(search=dict(target=0.5)), ValueError),
        (dict(method="exact"), ValueError),
        (dict(generation=3), TypeError),
        (dict(settings=dict(generations=3)), TypeError),
        (dict(search=dict(generations=3), generations=3), TypeError),
    ]:
        with pytest.raises(error):
            prune(model, batches(1), progress=False, **kwargs)
    assert_same(model, saved)
    assert ratio_levels([0.5])  # the level helpers stay importable next to msp.torch


def test_search_settings_as_keywords_settings_or_the_deprecated_mapping():
    data = batches(2)
    results = []
    for kwargs in (dict(generations=2, offspring=3, seed=4), dict(settings=SearchSettings(generations=2, offspring=3),
                                                                seed=4)):
        model = TinyLM(seed=5)
        results.append((prune(model, data, target=0.5, pruner="magnitude", progress=False, **kwargs), snapshot(model)))
    model = TinyLM(seed=5)
    with pytest.warns(DeprecationWarning, match=r"prune\(search=\{\.\.\.\}\) is deprecated; use .*settings="):
        old = prune(model, data, target=0.5, pruner="magnitude", progress=False, search=dict(generations=2, offspring=3),
                    seed=4)
    results.append((old, snapshot(model)))
    first, state = results[0]
    assert first.seed == 4 and first.params["generations"] == 2 and first.params["offspring"] == 3
    for plan, other_state in results[1:]:
        assert plan == first
        for name, tensor in state.items():
            assert torch.equal(tensor, other_state[name]), name
