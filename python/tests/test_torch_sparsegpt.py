"""msp.torch with SparseGPT: gram_matrices, Pruner/apply_plan/prune with pruner="sparsegpt", and the
Pruner's database (memory LRU and cache_dir), on a tiny gated model built here.

References written in this file: every layer's input captured by hooks of the test's own and its
Gram matrix summed in float64; per-layer pruning by ``msp.OBS`` on a copy of the dense weight with
that layer's Gram matrix (itself checked against the torch ``fasterprune`` transcription in
``test_obs.py`` and, on real SmolLM2 layers, in ``test_sparsegpt_real.py``).
"""

import types

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import msp  # noqa: E402
import msp.torch.criteria as criteria  # noqa: E402
from msp.levels import Level  # noqa: E402
from msp.torch import Grams, Pruner, activation_norms, apply_plan, gram_matrices, linear_layers, prune  # noqa: E402
from sparsegpt_reference import fasterprune  # noqa: E402

VOCAB, DIM, T = 29, 16, 12


class GatedLM(nn.Module):
    """Embedding, two blocks of q/k/v + o (q, k, v read one normalised tensor) and gate/up + down
    (gate and up read one tensor), an output head; ``.logits`` like Hugging Face models."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({
                "q": nn.Linear(DIM, DIM, bias=False), "k": nn.Linear(DIM, DIM, bias=False),
                "v": nn.Linear(DIM, DIM, bias=False), "o": nn.Linear(DIM, DIM, bias=False),
                "gate": nn.Linear(DIM, 2 * DIM, bias=False), "up": nn.Linear(DIM, 2 * DIM, bias=False),
                "down": nn.Linear(2 * DIM, DIM, bias=False),
            })
            for _ in range(2)
        )
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            x = nn.functional.layer_norm(h, (DIM,))
            q, k, v = b["q"](x), b["k"](x), b["v"](x)
            h = h + b["o"](torch.sigmoid(q) * k + v)
            x = nn.functional.layer_norm(h, (DIM,))
            h = h + b["down"](nn.functional.silu(b["gate"](x)) * b["up"](x))
        return types.SimpleNamespace(logits=self.lm_head(h))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, T), generator=g) for _ in range(n)]


def reference_grams(model, layers, data):
    """Every layer's X^T X in float64 from hooks of this test's own."""
    sums = {}
    handles = [m.register_forward_pre_hook(
        lambda mod, args, name=name: sums.__setitem__(
            name, sums.get(name, 0) + (lambda x: x.T @ x)(args[0].detach().reshape(-1, args[0].shape[-1]).double())))
        for name, m in layers.items()]
    with torch.no_grad():
        for batch in data:
            model(batch)
    for h in handles:
        h.remove()
    return sums


def per_layer_reference(dense, grams, levels, damp=0.01, block=128):
    """Each layer pruned alone by msp.OBS from its dense weight and Gram matrix."""
    out = {}
    for (name, w), level in zip(dense.items(), levels):
        w = w.clone()
        level = Level.parse(level)
        if not (level.m and level.n == level.m) and not (not level.m and level.sparsity == 0):
            with msp.OBS(grams[name], damp=damp) as obs:
                obs.prune_(w, level, block)
        out[name] = w
    return out


def weights(layers):
    return {n: m.weight.detach().clone() for n, m in layers.items()}


MIXED = ["2:8", "50%", "4:8", "1:8", "70%", "8:8", "3:8", "25%", "6:8", "2:8", "60%", "5:8", "0%", "4:8"]


@pytest.fixture
def setup():
    model = GatedLM()
    layers = linear_layers(model)
    data = batches(3)
    return model, layers, data, gram_matrices(model, layers, data)


# --- gram_matrices ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", ["auto", "torch"])
def test_gram_matrices_match_a_float64_reference_and_share_one_matrix_per_input(setup, kernels):
    model, layers, data, _ = setup
    grams = gram_matrices(model, layers, data, kernels=kernels)
    ref = reference_grams(model, layers, data)
    assert list(grams) == list(layers)
    for name, h in grams.items():
        r = ref[name]
        scale = torch.sqrt(torch.outer(torch.diagonal(r), torch.diagonal(r)))
        assert h.dtype == torch.float32 and torch.equal(h, h.T)
        assert float(((h.double() - r).abs() / scale).max()) < 1e-5
        assert grams.tokens[name] == sum(b.numel() for b in data)
    for b in range(2):
        q, k, v = (grams[f"blocks.{b}.{n}"] for n in "qkv")
        assert q is k is v
        assert grams[f"blocks.{b}.gate"] is grams[f"blocks.{b}.up"]
        assert grams[f"blocks.{b}.o"] is not q and grams[f"blocks.{b}.down"] is not q
    assert [len(g) for g in grams.groups] == [3, 1, 2, 1] * 2
    norms = activation_norms(model, layers, data)
    for name, n in grams.norms().items():
        assert torch.allclose(n, norms[name], rtol=1e-5, atol=0)


def test_gram_matrices_do_not_share_equal_values_read_from_distinct_tensors():
    class Twins(nn.Module):  # a and b get equal but distinct tensors; c reads a's output tensor x twice
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x.clone()) + self.b(x.clone())

    model = Twins()
    layers = {"a": model.a, "b": model.b}
    grams = gram_matrices(model, layers, [torch.randn(3, 4)])
    assert grams["a"] is not grams["b"] and torch.equal(grams["a"], grams["b"])


# --- pruning with SparseGPT ------------------------------------------------------------------------


def test_pruner_and_apply_plan_match_per_layer_obs(setup):
    model, layers, data, grams = setup
    dense = weights(layers)
    expected = per_layer_reference(dense, grams, MIXED)
    pruner = Pruner(layers, pruner="sparsegpt", grams=grams)
    pruner.apply(MIXED)
    for name, m in layers.items():
        assert torch.equal(m.weight, expected[name]), name
    pruner.restore()
    assert all(torch.equal(m.weight, dense[n]) for n, m in layers.items())
    masks = apply_plan(layers, MIXED, pruner="sparsegpt", grams=grams, return_masks=True)
    for name, m in layers.items():
        assert torch.equal(m.weight, expected[name])
        assert torch.equal(masks[name], expected[name] != 0)


def test_sparsegpt_agrees_with_the_fasterprune_transcription(setup):
    model, layers, data, grams = setup
    dense = weights(layers)
    apply_plan(layers, ["2:8"] * 7 + ["50%"] * 7, pruner="sparsegpt", grams=grams, block=8)
    for i, (name, m) in enumerate(layers.items()):
        n, mm, sparsity = (2, 8, 0.0) if i < 7 else (0, 0, 0.5)
        ref, _ = fasterprune(dense[name].double(), grams[name].double(), sparsity=sparsity, n=n, m=mm, blocksize=8)
        assert float((m.weight.detach().double() - ref).abs().max()) <= 1e-4 * float(dense[name].abs().max()), name


def test_damp_and_block_reach_the_solver(setup):
    model, layers, data, grams = setup
    dense = weights(layers)
    plan = ["40%"] * 14
    expected = per_layer_reference(dense, grams, plan, damp=0.1, block=4)
    apply_plan(layers, plan, pruner="sparsegpt", grams=grams, damp=0.1, block=4)
    assert all(torch.equal(m.weight, expected[n]) for n, m in layers.items())


def test_the_host_copy_path_gives_the_same_weights(setup):
    model, layers, data, grams = setup
    dense = weights(layers)
    Pruner(layers, pruner="sparsegpt", grams=grams).apply(MIXED)
    native = weights(layers)
    for n, m in layers.items():
        m.weight.data.copy_(dense[n])
    Pruner(layers, pruner="sparsegpt", grams=grams, kernels="torch", dense_copies="host").apply(MIXED)
    assert all(torch.equal(m.weight, native[n]) for n, m in layers.items())


class CountingOBS(msp.OBS):
    made = 0

    def __init__(self, *args, **kwargs):
        type(self).made += 1
        super().__init__(*args, **kwargs)


def test_one_factorisation_per_distinct_gram(setup, monkeypatch):
    model, layers, data, grams = setup
    monkeypatch.setattr(criteria, "OBS", CountingOBS)
    CountingOBS.made = 0
    pruner = Pruner(layers, pruner="sparsegpt", grams=grams)
    pruner.build(msp.nm_levels(8) + MIXED, progress=False)
    assert CountingOBS.made == len(grams.groups) == 8
    before = weights(layers)
    pruner.apply(MIXED)  # every pair is in the database: no sweep, no factorisation
    assert CountingOBS.made == 8
    assert all(torch.equal(m.weight, w) for (n, m), w in zip(layers.items(), per_layer_reference(
        before, grams, MIXED).values()))
    CountingOBS.made = 0
    apply_plan(layers, MIXED, pruner="sparsegpt", grams=grams)
    assert CountingOBS.made == 8


def test_lazy_and_built_databases_agree_and_a_small_budget_rebuilds_identical_bytes(setup):
    model, layers, data, grams = setup
    plans = [MIXED, ["3:8"] * 14, ["70%"] * 14, MIXED[::-1]]
    lazy = Pruner(layers, pruner="sparsegpt", grams=grams)
    got = []
    for plan in plans:
        lazy.apply(plan)
        got.append(weights(layers))
    lazy.restore()
    built = Pruner(layers, pruner="sparsegpt", grams=grams)
    built.build(["3:8", "70%"] + MIXED, progress=False)
    held = built.cached_bytes
    assert held == sum(m.weight.numel() * 4 * len({Level.parse(x) for x in ["3:8", "70%"] + MIXED} - {
        Level.parse("8:8"), Level.parse("0%")}) for m in layers.values())
    small = Pruner(layers, pruner="sparsegpt", grams=grams, cache_bytes=2 * DIM * 2 * DIM * 4)
    for plan, expected in zip(plans + plans, got + got):
        for p in (built, small):
            p.apply(plan)
            assert all(torch.equal(m.weight, expected[n]) for n, m in layers.items())
        assert small.cached_bytes <= 2 * DIM * 2 * DIM * 4
    assert built.cached_bytes == held


def test_disk_cache_is_reused_and_invalidated(tmp_path, setup, monkeypatch):
    model, layers, data, grams = setup
    monkeypatch.setattr(criteria, "OBS", CountingOBS)
    levels = ["2:8", "50%", "6:8"]
    first = Pruner(layers, pruner="sparsegpt", grams=grams, cache_dir=tmp_path)
    first.build(levels, progress=False)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 14 * 3 and not list(tmp_path.glob("*.tmp"))
    first.apply(MIXED[:1] * 14)
    expected = weights(layers)
    first.restore()
    first.close()
    CountingOBS.made = 0
    second = Pruner(layers, pruner="sparsegpt", grams=grams, cache_dir=tmp_path)
    second.apply(MIXED[:1] * 14)
    assert CountingOBS.made == 0 and second.database.disk_hits == 14
    assert all(torch.equal(m.weight, expected[n]) for n, m in layers.items())
    second.restore()

    def hits(**changes):
        kwargs = dict(pruner="sparsegpt", grams=grams, cache_dir=tmp_path) | changes
        p = Pruner(layers, **kwargs)
        p.apply(["2:8"] * 14)
        p.restore()
        return p.database.disk_hits

    assert hits() == 14
    assert hits(damp=0.02) == 0
    assert hits(block=64) == 0
    scaled = {n: g * 2 if n.startswith("blocks.1.") else g for n, g in grams.items()}
    assert hits(grams=scaled) == 7
    with torch.no_grad():
        layers["blocks.0.q"].weight[0, 0] += 1
    assert hits() == 13


def test_corrupted_cache_files_are_rejected_and_rebuilt(tmp_path, setup):
    model, layers, data, grams = setup
    Pruner(layers, pruner="sparsegpt", grams=grams, cache_dir=tmp_path).build(["2:8"], progress=False)
    expected = per_layer_reference(weights(layers), grams, ["2:8"] * 14)
    files = sorted(tmp_path.glob("*.npz"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    raw = bytearray(files[1].read_bytes())
    raw[-300] ^= 0x40  # a flipped bit (in the weight data or the zip's directory)
    files[1].write_bytes(bytes(raw))
    files[2].write_bytes(b"not a zip")
    p = Pruner(layers, pruner="sparsegpt", grams=grams, cache_dir=tmp_path)
    p.apply(["2:8"] * 14)
    assert p.database.rejected == 3 and p.database.disk_hits == 11
    assert all(torch.equal(m.weight, expected[n]) for n, m in layers.items())
    p.restore()
    again = Pruner(layers, pruner="sparsegpt", grams=grams, cache_dir=tmp_path)
    again.apply(["2:8"] * 14)  # the rebuilt files are whole again
    assert again.database.rejected == 0 and again.database.disk_hits == 14


def test_results_do_not_depend_on_runs_or_threads(setup):
    model, layers, data, grams = setup
    dense = weights(layers)
    results = []
    saved = msp.get_num_threads()
    try:
        for threads in (1, 2, 1):
            msp.set_num_threads(threads)
            for n, m in layers.items():
                m.weight.data.copy_(dense[n])
            apply_plan(layers, MIXED, pruner="sparsegpt", grams=gram_matrices(model, layers, data))
            results.append(weights(layers))
    finally:
        msp.set_num_threads(saved)
    assert all(torch.equal(r[n], results[0][n]) for r in results for n in layers)


def test_prune_with_sparsegpt_applies_the_plan_with_the_dense_models_grams():
    model, data = GatedLM(seed=3), batches(2, seed=4)
    layers = linear_layers(model)
    grams = gram_matrices(model, layers, data)
    dense = weights(layers)
    plan = prune(model, data, target=0.5, structure="N:8", pruner="sparsegpt", method="search", generations=1,
                 offspring=2, survivors=1, progress=False)
    expected = per_layer_reference(dense, grams, plan.layer_levels)
    assert all(torch.equal(m.weight, expected[n]) for n, m in layers.items())
    uniform = prune(GatedLM(seed=3), data, target=0.5, pruner="sparsegpt", method="uniform", grams=grams,
                    progress=False)
    assert all(level == Level.nm(4, 8) for level in uniform.layer_levels)


def test_prune_sequential_prunes_block_by_block_on_the_pruned_models_activations():
    data = batches(2, seed=8)
    model = GatedLM(seed=9)
    plan = prune(model, data, target=0.5, pruner="sparsegpt", method="uniform", sequential=True, progress=False)
    assert all(level == Level.nm(4, 8) for level in plan.layer_levels)
    reference = GatedLM(seed=9)
    layers = linear_layers(reference)
    for b in range(2):  # full forward passes here, on the reference pruned so far
        block = {n: m for n, m in layers.items() if n.startswith(f"blocks.{b}.")}
        expected = per_layer_reference(weights(block), gram_matrices(reference, block, data), ["4:8"] * len(block))
        for n, m in block.items():
            m.weight.data.copy_(expected[n])
    got = linear_layers(model)
    assert all(torch.equal(got[n].weight, m.weight) for n, m in layers.items())
    oneshot = GatedLM(seed=9)
    prune(oneshot, data, target=0.5, pruner="sparsegpt", method="uniform", progress=False)
    first = linear_layers(oneshot)
    assert all(torch.equal(first[n].weight, got[n].weight) for n in layers if n.startswith("blocks.0."))
    assert not all(torch.equal(first[n].weight, got[n].weight) for n in layers if n.startswith("blocks.1."))
    with pytest.raises(ValueError, match="sequential"):
        prune(GatedLM(), data, pruner="wanda", sequential=True, progress=False)


def test_prune_with_wanda_takes_its_norms_from_given_grams():
    data = batches(2, seed=5)
    layers = linear_layers(GatedLM(seed=6))
    g = torch.Generator().manual_seed(7)
    fake = Grams({n: torch.diag(torch.rand(m.in_features, generator=g) + 0.1) for n, m in layers.items()},
                 {n: 1 for n in layers})  # norms unlike the model's activations

    def pruned(**statistic):
        model = GatedLM(seed=6)
        prune(model, data, target=0.5, pruner="wanda", method="uniform", progress=False, **statistic)
        return [m.weight.detach().clone() for m in linear_layers(model).values()]

    by_grams, by_norms, own = pruned(grams=fake), pruned(norms=fake.norms()), pruned()
    assert all(torch.equal(a, b) for a, b in zip(by_grams, by_norms))
    assert any(not torch.equal(a, b) for a, b in zip(by_grams, own))


def test_bad_sparsegpt_arguments_leave_the_weights_alone(setup):
    model, layers, data, grams = setup
    dense = weights(layers)
    wrong = dict(grams)
    wrong["blocks.0.down"] = torch.eye(DIM)
    nan = dict(grams)
    nan["blocks.1.o"] = grams["blocks.1.o"].clone()
    nan["blocks.1.o"][0, 0] = float("nan")
    for kwargs, message in [
        (dict(grams=wrong), "in_features"),
        (dict(grams=nan), "finite"),
        (dict(grams=grams, damp=-1.0), "damp"),
        (dict(grams=grams, block=0), "block"),
        (dict(grams={n: g for n, g in grams.items() if n != "blocks.0.o"}), "no entry"),
        (dict(norms=grams.norms()), "does not use them"),
    ]:
        with pytest.raises(ValueError, match=message):
            Pruner(layers, pruner="sparsegpt", **kwargs)
        with pytest.raises(ValueError, match=message):
            apply_plan(layers, MIXED, pruner="sparsegpt", **kwargs)
    with pytest.raises(ValueError, match="does not use them"):
        Pruner(layers, pruner="wanda", norms=grams.norms(), grams=grams)
    zero = {n: torch.zeros_like(g) for n, g in grams.items()}  # every input dead: H := I, not an error
    apply_plan(layers, ["2:8"] * 14, pruner="sparsegpt", grams=zero, damp=0.0)
    assert all(bool((m.weight == 0).all()) for m in layers.values())
    for n, m in layers.items():
        m.weight.data.copy_(dense[n])
    singular = dict(grams)  # rank 1, no damping: found when the solver factorises it
    singular["blocks.1.down"] = torch.ones_like(grams["blocks.1.down"])
    pruner = Pruner(layers, pruner="sparsegpt", grams=singular, damp=0.0)
    with pytest.raises(ValueError, match="positive definite"):
        pruner.apply(["50%"] * 14)
    assert all(torch.equal(m.weight, dense[n]) for n, m in layers.items())  # the Pruner restored them
