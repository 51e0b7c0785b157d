"""msp.torch.prune's search: checkpoints that resume by themselves (an interrupted and resumed prune
ends with the plan of an uninterrupted one), staged fidelity on token prefixes (checked against a
search driven by hand on prefixes cut here), and the proxy tables passed through."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from msp import InvalidArgumentError, Search  # noqa: E402
from msp.levels import nm_levels  # noqa: E402
from msp.planner import plan as make_plan  # noqa: E402
from msp.torch import Pruner, apply_plan, kl_to_dense, linear_layers, prune, reference_logits  # noqa: E402
from msp.torch.staging import fidelity_token_sets  # noqa: E402
from torch_models import BlockLM, assert_same, block_batches, random_norms, snapshot  # noqa: E402

SEARCH = dict(generations=4, offspring=4, survivors=2, seed=5)


class Boom(Exception):
    pass


class Interrupt:
    """A forward hook on the model's head that raises ``Boom`` on its ``after``-th call (never when
    ``after`` is None) and counts the calls."""

    def __init__(self, model, after=None):
        self.calls, self.after = 0, after
        self.handle = model.lm_head.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.after is not None and self.calls == self.after:
            raise Boom(f"interrupted at forward call {self.calls}")

    def close(self):
        self.handle.remove()


def problem(seed=3):
    """A tiny model with fixed Fisher traces and Wanda norms (so every call plans the same problem)."""
    model = BlockLM(seed=seed)
    layers = linear_layers(model)
    sensitivity = {n: 1.0 + i for i, n in enumerate(layers)}
    return model, sensitivity, random_norms(layers)


def pruned(model, data, sensitivity, norms, **kwargs):
    args = dict(target=0.6, structure="N:8", pruner="wanda", sensitivity=sensitivity, norms=norms,
                progress=False, **SEARCH)
    args.update(kwargs)
    return prune(model, data, **args)


def same_plan(a, b):
    assert a.levels == b.levels
    assert a.fitness == b.fitness and a.evaluations == b.evaluations and a.history == b.history


@pytest.mark.parametrize("fraction", [0.5, 0.75, 0.95])
@pytest.mark.parametrize("fidelity_tokens", [None, (10, 40)])
def test_an_interrupted_prune_resumes_from_its_checkpoint_to_the_uninterrupted_plan(tmp_path, fraction,
                                                                                    fidelity_tokens):
    data = block_batches(3)
    model, sensitivity, norms = problem()
    dense = snapshot(model)
    counter = Interrupt(model)
    expected = pruned(model, data, sensitivity, norms, fidelity_tokens=fidelity_tokens)
    counter.close()
    uninterrupted_calls = counter.calls

    model, _, _ = problem()
    path = tmp_path / "search.msp"
    hook = Interrupt(model, after=int(fraction * uninterrupted_calls))  # a forward pass of some evaluation
    with pytest.raises(Boom):
        pruned(model, data, sensitivity, norms, fidelity_tokens=fidelity_tokens, checkpoint=path)
    hook.close()
    assert_same(model, dense)  # left dense on the error
    assert path.is_file()  # saved after the batches told before the interruption
    told = Search.load(path)
    assert 0 < told.progress["evaluations"] + told.progress["cheap_evaluations"]
    told.close()

    resumed_hook = Interrupt(model)
    resumed = pruned(model, data, sensitivity, norms, fidelity_tokens=fidelity_tokens, checkpoint=path)
    resumed_hook.close()
    same_plan(resumed, expected)
    assert resumed_hook.calls < uninterrupted_calls  # it went on from the file, not from the start
    reference = BlockLM(seed=3)
    apply_plan(linear_layers(reference), resumed, pruner="wanda", norms=norms)
    assert_same(model, snapshot(reference))

    # The finished search's file gives its plan again without scoring anything.
    model, _, _ = problem()
    again_hook = Interrupt(model)
    again = pruned(model, data, sensitivity, norms, fidelity_tokens=fidelity_tokens, checkpoint=path)
    again_hook.close()
    same_plan(again, expected)
    # Only the dense reference logits of the fitness batches ran (one call per batch and level).
    assert again_hook.calls == (2 if fidelity_tokens is None else 1 + 2)


def test_a_checkpoint_of_another_problem_is_refused_and_the_model_stays_dense(tmp_path):
    data = block_batches(3)
    model, sensitivity, norms = problem()
    path = tmp_path / "search.msp"
    pruned(model, data, sensitivity, norms, checkpoint=path)
    changes = {
        "target": dict(target=0.5),
        "sensitivity": dict(sensitivity={n: 2.0 for n in sensitivity}),
        "settings": dict(seed=6),
        "statistic": dict(norms=random_norms(linear_layers(model), seed=9)),
        "fitness batches": dict(eval_batches=block_batches(2, seed=7)),
        "fidelity_tokens": dict(fidelity_tokens=(10, 40)),
        "levels": dict(levels=nm_levels(8)[:7]),
        "fitness": dict(fitness="perplexity"),
    }
    for part, change in changes.items():
        model, _, _ = problem()
        dense = snapshot(model)
        args = {"sensitivity": sensitivity, "norms": norms, **change}
        with pytest.raises(InvalidArgumentError, match=f"another problem .*{part}"):
            pruned(model, data, args.pop("sensitivity"), args.pop("norms"), checkpoint=path, **args)
        assert_same(model, dense)
    # A search file not written by prune, and a corrupted file, are refused too.
    other = tmp_path / "plain.msp"
    with Search([64] * 6, 0.75, nm_levels(8), generations=1) as search:
        search.save(other)
    with pytest.raises(InvalidArgumentError, match="not written by msp.torch.prune"):
        pruned(model, data, sensitivity, norms, checkpoint=other)
    broken = tmp_path / "broken.msp"
    broken.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InvalidArgumentError, match="not a valid msp search file"):
        pruned(model, data, sensitivity, norms, checkpoint=broken)
    assert_same(model, dense)


def test_fidelity_token_sets_take_whole_batches_then_leading_rows():
    data = block_batches(3, rows=2)  # 3 batches of 2 x 10 tokens
    sets = fidelity_token_sets(data, (5, 10, 25, 60))
    expected = [[data[0][:1]], [data[0][:1]], [data[0], data[1][:1]], data]
    for got, want in zip(sets, expected):
        assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
    dicts = [{"input_ids": b, "attention_mask": torch.ones_like(b), "note": "kept"} for b in data]
    (first,) = fidelity_token_sets(dicts, (25,))
    assert torch.equal(first[0]["input_ids"], data[0]) and torch.equal(first[1]["attention_mask"], data[1][:1] * 0 + 1)
    assert first[1]["note"] == "kept"
    with pytest.raises(ValueError, match="increasing"):
        fidelity_token_sets(data, (20, 20))
    with pytest.raises(ValueError, match="hold 60"):
        fidelity_token_sets(data, (61,))
    with pytest.raises(TypeError, match="integers"):
        fidelity_token_sets(data, (10.0,))
    with pytest.raises(TypeError, match="token ids"):
        fidelity_token_sets([(b, b) for b in data], (10,))


def test_staged_fidelity_scores_on_token_prefixes_like_a_search_driven_by_hand():
    data = block_batches(3, rows=2)
    model, sensitivity, norms = problem()
    plan = pruned(model, data, sensitivity, norms, fidelity_tokens=(10, 40), fidelity_keep=0.5)

    # By hand: every candidate on the first sequence, the best half again on the first two batches.
    reference = BlockLM(seed=3)
    layers = linear_layers(reference)
    levels = [data[0][:1]], [data[0], data[1]]
    dense = [reference_logits(reference, batches) for batches in levels]
    pruner = Pruner(layers, "wanda", norms)
    seen = []
    with Search(pruner.sizes, 0.6, nm_levels(8), [sensitivity[n] for n in layers], names=list(layers),
                fidelity_levels=2, fidelity_keep=0.5, **SEARCH) as search:
        while candidates := search.ask():
            seen.append((search.fidelity, len(candidates)))
            values = []
            for candidate in candidates:
                pruner.apply(candidate)
                values.append(kl_to_dense(reference, levels[search.fidelity], dense[search.fidelity]))
            search.tell(values)
        expected = search.best
    pruner.close()
    same_plan(plan, expected)
    assert (0, 4) in seen and (1, 2) in seen  # staged: 4 offspring cheaply, the best 2 again
    # The plan's fitness is the KL of the pruned model from the dense one on the first 40 tokens
    # (mean over token positions), computed here in float64.
    dense_model, pruned_model = BlockLM(seed=3), BlockLM(seed=3)
    apply_plan(linear_layers(pruned_model), plan, pruner="wanda", norms=norms)
    total = 0.0
    with torch.no_grad():
        for ids in levels[1]:
            logp = dense_model(ids).logits.double().log_softmax(-1)
            logq = pruned_model(ids).logits.double().log_softmax(-1)
            total += float((logp.exp() * (logp - logq)).sum())
    assert plan.fitness == pytest.approx(total / 40, rel=1e-4)


def test_staged_fidelity_and_checkpoint_arguments_are_checked_before_the_model_is_touched(tmp_path):
    data = block_batches(2)
    model, sensitivity, norms = problem()
    dense = snapshot(model)
    bad = [
        (dict(fidelity_tokens=(40, 10)), ValueError, "increasing"),
        (dict(fidelity_tokens="256"), TypeError, "sequence"),
        (dict(fidelity_tokens=(10, 40), fidelity_levels=3), ValueError, "fidelity_levels=3"),
        (dict(fidelity_tokens=(10,), fitness=lambda m: 1.0), ValueError, "fidelity_tokens needs"),
        (dict(fidelity_tokens=(10,), method="prior"), ValueError, "method='search'"),
        (dict(checkpoint=tmp_path / "x.msp", method="uniform"), ValueError, "method='search'"),
        (dict(checkpoint=3.5), TypeError, "PathLike"),
        (dict(fidelity_tokens=(10, 1000)), ValueError, "hold 40"),
    ]
    for change, error, message in bad:
        with pytest.raises(error, match=message):
            pruned(model, data, sensitivity, norms, **change)
        assert_same(model, dense)
    assert not (tmp_path / "x.msp").exists()


def test_proxy_costs_reach_the_search():
    data = block_batches(2)
    model, sensitivity, norms = problem()
    layers = linear_layers(model)
    sizes = [m.weight.numel() for m in layers.values()]
    # A proxy table favouring the first layers' sparsity: its exact optimum joins generation 0.
    costs = np.array([[k * (1.0 + 10 * i) for k in range(8)] for i in range(len(layers))])
    optimum = make_plan(sizes, 0.6, nm_levels(8), method="exact", cost_table=costs)
    seen = []

    def fitness(m):  # the plan applied, read back from the weights: each layer's zero fraction
        seen.append(tuple(float((layer.weight == 0).float().mean()) for layer in linear_layers(m).values()))
        return float(len(seen))

    pruned(model, data, sensitivity, norms, fitness=fitness, proxy_costs=costs, generations=1)
    with_proxy = list(seen)
    seen.clear()
    pruned(problem()[0], data, sensitivity, norms, fitness=fitness, generations=1)
    assert tuple(optimum.sparsity) in with_proxy and tuple(optimum.sparsity) not in seen


def test_a_sparsegpt_checkpoint_is_tied_to_its_gram_matrices(tmp_path):
    from msp.torch import gram_matrices

    data = block_batches(3)
    model, sensitivity, _ = problem()
    layers = linear_layers(model)
    grams = gram_matrices(model, layers, data)
    path = tmp_path / "search.msp"
    first = pruned(model, data, sensitivity, None, pruner="sparsegpt", grams=grams, checkpoint=path)
    # The same problem resumes from the finished search: its plan, with no candidate scored again.
    model, _, _ = problem()
    counter = Interrupt(model)
    try:
        same_plan(pruned(model, data, sensitivity, None, pruner="sparsegpt", grams=grams, checkpoint=path), first)
    finally:
        counter.close()
    assert counter.calls == 2  # the dense model's reference logits on the two fitness batches only
    # Gram matrices of other calibration data make another problem.
    model, _, _ = problem()
    dense = snapshot(model)
    other = gram_matrices(model, linear_layers(model), block_batches(3, seed=8))
    with pytest.raises(InvalidArgumentError, match="another problem .*statistic"):
        pruned(model, data, sensitivity, None, pruner="sparsegpt", grams=other, checkpoint=path)
    assert_same(model, dense)
