"""The public names: every name of ``msp.__all__`` and ``msp.torch.__all__`` imports and works (each
checked against a value worked out here), the README's Python code runs as written, and the Python
contract of the design document keeps its spellings (old ones with a ``DeprecationWarning``)."""

import re
from pathlib import Path
import warnings

import numpy as np
import pytest

import msp
from conftest import REPO_DIR
from masking_reference import ref_nm_keep, ref_topk_keep
from readme_blocks import python_blocks
from msp import Level, Plan, Search, plan
from msp.levels import nm_levels, ratio_levels

README = (REPO_DIR / "README.md").read_text()

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def test_public_exports():
    assert msp.plan is plan  # the function, not a module
    assert msp.Plan is Plan and msp.Search is Search
    assert msp.Level is Level and msp.nm_levels is nm_levels and msp.ratio_levels is ratio_levels


# --- every name of msp.__all__ works ------------------------------------------------------------------


def _fisher_names():
    acc = msp.FisherAccumulator([2, 3])
    acc.add(0, np.array([1, 2], np.float32))
    acc.add(1, np.array([2, 0, 1], np.float32))
    acc.end_sample()
    acc.add(0, np.array([3, 0], np.float32))
    acc.end_sample()
    assert acc.traces().tolist() == [(5 + 9) / 2, 5 / 2] and acc.num_samples == 2
    assert msp.sum_squares(np.array([3, 4], np.float16)) == 25.0
    diag = np.ones(3, np.float32)
    msp.add_fisher_diagonal(np.array([1, 2, 3], np.float32), diag, scale=0.5)
    assert diag.tolist() == [1.5, 3.0, 5.5]


def _masking_names():
    scores = np.array([[3, 1, 4, 1, 5, 9, 2, 6]], np.float32)
    assert np.array_equal(msp.nm_mask(scores, 2, 4), ref_nm_keep(scores, 2, 4))
    w = scores - 4
    msp.prune_nm_(w, "1:4")  # w = [-1, -3, 0, -3 | 1, 5, -2, 2]: on the tie |-3| the lower index stays
    assert w.tolist() == [[0, -3, 0, 0, 0, 5, 0, 0]]
    w = scores.copy()
    assert np.array_equal(msp.prune_topk_(w, 0.5, scope="layer"), ref_topk_keep(scores, 0.5, "layer"))
    msp.set_num_threads(2)
    assert msp.get_num_threads() == 2


def _planning_names():
    sizes, levels = [10, 30], msp.ratio_levels([0.0, 0.5, 0.75])
    assert [str(level) for level in msp.nm_levels(4)] == ["4:4", "3:4", "2:4", "1:4"]
    assert msp.Level.parse("2:8") == msp.Level(0.75, 2, 8)
    uniform = msp.plan(sizes, 0.5, levels, method="uniform")
    assert isinstance(uniform, msp.Plan) and uniform.levels == [1, 1]
    with msp.Problem(sizes, 0.5, levels) as problem:
        assert problem.range == (0.0, 0.75) and problem.check([1, 1]) == 0.5
    costs = [[0.0, 1.0, 3.0], [0.0, 1.0, 2.0]]
    with msp.Search(sizes, 0.5, levels, settings=msp.SearchSettings(generations=2)) as search:
        best = search.run_additive(costs, progress=False)
    assert best.average_sparsity == 0.5 and best.fitness == 2.0  # 0.5 everywhere: the only feasible plan
    w = np.array([[1, -2, 3, -4]], np.float32)
    assert msp.cost_table(w, [0.5, "1:4"]).tolist() == [1 + 4, 1 + 4 + 9]


def _packed_names():
    w = np.array([[3, -1, 4, 1, -5, 9, 2, -6]], np.float32)
    packed = msp.nm_pack(w, "2:4")  # keeps 3, 4 and 9, -6: values in column order, index bits 0, 2, 5, 7
    assert isinstance(packed, msp.PackedNM) and packed.values.tolist() == [[3, 4, 9, -6]]
    assert packed.index.tolist() == [[0b10100101, 0, 0, 0]] and packed.nbytes == 16 + 4
    assert packed.unpack().tolist() == [[3, 0, 4, 0, 0, 9, 0, -6]]
    x = np.array([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 2, 0, 0, 0, 0, 1]], np.float32)
    assert msp.nm_linear(x, packed).tolist() == [[10], [2]]  # 3 + 4 + 9 - 6, 2 * 4 - 6


def _error_names():
    for cls, builtin in [(msp.InvalidArgumentError, ValueError), (msp.OutOfMemoryError, MemoryError),
                         (msp.InfeasibleError, ValueError), (msp.MSPCancelled, RuntimeError),
                         (msp.InvalidStateError, RuntimeError), (msp.InternalError, RuntimeError)]:
        assert issubclass(cls, msp.MSPError) and issubclass(cls, builtin)
    with pytest.raises(msp.InfeasibleError):
        msp.plan([1, 1], 0.9, ratio_levels([0.0, 0.5]), method="uniform")


def _sparsegpt_names():
    acc = msp.GramAccumulator([2])
    acc.add(0, np.array([[1, 2], [3, -1]], np.float32))
    assert acc.gram(0).tolist() == [[10, -1], [-1, 5]] and acc.tokens(0) == 2
    # H = [[2, 1], [1, 2]]: pruning w0 = 1 moves w1 by -w0 * H_10 / H_11 = -0.5 (the OBS update).
    with msp.OBS(np.array([[2, 1], [1, 2]], np.float32), damp=0) as obs:
        w = np.array([[1, 3]], np.float32)
        assert obs.prune_(w, "1:2").tolist() == [[False, True]]
        assert w[0, 0] == 0 and abs(w[0, 1] - 3.5) < 1e-6


def _version_names():
    assert msp.ABI_VERSION == msp._lib.lib.msp_abi_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", msp.version()) and msp.__version__ == msp.version()


MSP_NAMES = {
    "ABI_VERSION": _version_names, "version": _version_names, "__version__": _version_names,
    "MSPError": _error_names, "InvalidArgumentError": _error_names, "OutOfMemoryError": _error_names,
    "InfeasibleError": _error_names, "MSPCancelled": _error_names, "InvalidStateError": _error_names,
    "InternalError": _error_names,
    "nm_mask": _masking_names, "prune_nm_": _masking_names, "prune_topk_": _masking_names,
    "set_num_threads": _masking_names, "get_num_threads": _masking_names,
    "FisherAccumulator": _fisher_names, "sum_squares": _fisher_names, "add_fisher_diagonal": _fisher_names,
    "Level": _planning_names, "nm_levels": _planning_names, "ratio_levels": _planning_names,
    "Plan": _planning_names, "Problem": _planning_names, "Search": _planning_names,
    "SearchSettings": _planning_names, "plan": _planning_names, "cost_table": _planning_names,
    "PackedNM": _packed_names, "nm_pack": _packed_names, "nm_linear": _packed_names,
    "GramAccumulator": _sparsegpt_names, "OBS": _sparsegpt_names,
}


def test_every_name_of_msp_all_is_checked_here():
    assert sorted(MSP_NAMES) == sorted(msp.__all__)
    namespace: dict = {}
    exec("from msp import *", namespace)
    assert set(msp.__all__) <= set(namespace)


@pytest.mark.parametrize("name", sorted(msp.__all__))
def test_every_name_of_msp_all_works(name):
    getattr(msp, name)
    MSP_NAMES[name]()


# --- every name of msp.torch.__all__ works ------------------------------------------------------------


@needs_torch
def test_every_name_of_msp_torch_all_works(tmp_path):
    import msp.torch as mt
    from torch_models import BLOCK_VOCAB, BlockLM, block_batches

    assert sorted(mt.__all__) == sorted([
        "linear_layers", "block_groups", "fisher_traces", "causal_lm_loss", "activation_norms", "Pruner",
        "apply_plan", "prune", "perplexity", "kl_to_dense", "reference_logits", "TopK", "compress",
        "PackedLinear", "save_compressed", "load_compressed", "gram_matrices", "Grams"])
    model, data = BlockLM(seed=2), block_batches(2)
    layers = mt.linear_layers(model)
    assert list(layers) == [f"layers.{b}.{n}" for b in range(2) for n in ("up", "down", "mix")]
    assert mt.block_groups(layers) == [0, 0, 0, 1, 1, 1]
    loss = mt.causal_lm_loss(model, data[0])
    assert abs(loss.item() - float(np.log(mt.perplexity(model, data[:1])))) < 1e-5
    traces = mt.fisher_traces(model, layers, data, progress=False)
    assert list(traces) == list(layers) and all(t > 0 for t in traces.values())
    norms = mt.activation_norms(model, layers, data)
    grams = mt.gram_matrices(model, layers, data)  # on the dense model, as norms
    assert [n.shape[0] for n in norms.values()] == [m.in_features for m in layers.values()]
    dense = mt.reference_logits(model, data, top_k=4)
    assert isinstance(dense[0], mt.TopK) and mt.kl_to_dense(model, data, dense) < 1e-6
    pruner = mt.Pruner(layers, pruner="wanda", norms=norms)
    pruner.apply(["2:8"] * 6)
    assert all(float((m.weight == 0).float().mean()) == 0.75 for m in layers.values())
    assert mt.kl_to_dense(model, data, dense) > 1e-4
    pruner.restore()
    masks = mt.apply_plan(layers, ["4:8"] * 6, pruner="magnitude", return_masks=True)
    assert all(float(mask.float().mean()) == 0.5 for mask in masks.values())
    assert isinstance(grams, mt.Grams) and len(grams.groups) == 6  # BlockLM's linears read distinct inputs
    for name, h in grams.items():
        assert torch.allclose(torch.diagonal(h).sqrt(), norms[name], rtol=1e-5)
    with msp.OBS(grams["layers.0.up"]) as obs:
        expected = layers["layers.0.up"].weight.detach().clone()
        obs.prune_(expected, "2:8")
    sparsegpt = mt.Pruner(layers, pruner="sparsegpt", grams=grams)
    sparsegpt.apply(["2:8"] * 6)
    assert torch.equal(layers["layers.0.up"].weight, expected)
    sparsegpt.restore()  # back to the 4:8 magnitude masks
    with torch.no_grad():
        masked = model(data[0]).logits
        mt.compress(model, ["4:8"] * 6)  # every layer packed: the same logits within float32 rounding
        assert all(isinstance(model.get_submodule(n), mt.PackedLinear) for n in layers)
        assert torch.allclose(model(data[0]).logits, masked, rtol=1e-5, atol=1e-5)
        mt.save_compressed(model, tmp_path / "model.safetensors")
        loaded = mt.load_compressed(lambda: BlockLM(seed=3), tmp_path / "model.safetensors")
        assert torch.equal(loaded(data[0]).logits, model(data[0]).logits)
    result = mt.prune(BlockLM(seed=2), data, target=0.5, pruner="magnitude", method="prior", progress=False)
    assert abs(result.average_sparsity - 0.5) <= 0.001 and BLOCK_VOCAB == 41


# --- the README ---------------------------------------------------------------------------------------


def _python_blocks() -> list[str]:
    return python_blocks(README)  # the blocks that need llm-compressor run in python/tests_llmcompressor


def _documented_names() -> set[str]:
    """Every ``msp.x.y`` the README's Python code and its inline code spans use."""
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    texts = _python_blocks() + re.findall(r"`([^`\n]+)`", prose)
    names = {m.group(0) for text in texts for m in re.finditer(r"(?<![\w/.])msp(?:\.\w+)+", text)}
    names -= {"msp.h", "msp.pc"}  # the C header and the pkg-config file, not Python names
    for text in _python_blocks():
        for module, imported in re.findall(r"from (msp[\w.]*) import ([\w, ]+)", text):
            names.update(f"{module}.{name.strip()}" for name in imported.split(","))
    return names


@needs_torch
def test_every_msp_name_the_readme_uses_resolves():
    import importlib

    import msp.torch  # noqa: F401

    names = _documented_names()
    assert {"msp.torch.prune", "msp.Plan.load", "msp.cost_table", "msp.torch.Pruner", "msp.Search"} <= names
    for dotted in sorted(names):
        parts = dotted.split(".")
        value = importlib.import_module(parts[0])
        for i, part in enumerate(parts[1:], start=2):
            if not hasattr(value, part):  # a subpackage `import msp` leaves to be imported, e.g. msp.integrations
                importlib.import_module(".".join(parts[:i]))
            value = getattr(value, part)


def _given(block: str) -> set[str]:
    """The names a block uses without defining them: its ``# given: a, b (what they are)`` line."""
    match = re.match(r"# given: ([\w, ]+)", block)
    return set() if match is None else {name.strip() for name in match.group(1).split(",") if name.strip()}


def _run_readme_block(block: str, given: dict, capsys) -> tuple[dict, str]:
    """Run ``block`` as written with exactly the names it declares as given; return its namespace and
    what it printed. No deprecated spelling may be used."""
    assert set(given) == _given(block), "a README block must declare every name it does not define"
    namespace = dict(given)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(block, "README.md", "exec"), namespace)
    deprecated = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
                  and "deprecated; use" in str(w.message)]
    assert deprecated == []  # the README shows the current spellings
    return namespace, capsys.readouterr().out


def _token_ids(rows=40):
    from torch_models import BLOCK_T, BLOCK_VOCAB

    return torch.randint(0, BLOCK_VOCAB, (rows, BLOCK_T), generator=torch.Generator().manual_seed(11))


def _assert_holds(layers, result):
    """Every layer's weight holds exactly its planned N:M level."""
    for module, level in zip(layers.values(), result.layer_levels):
        w = module.weight.detach()
        assert ((w != 0).reshape(w.shape[0], -1, level.m).sum(-1) == level.n).all()


def _readme_masking(block, capsys):
    namespace, _ = _run_readme_block(block, {}, capsys)
    dense_w = np.random.default_rng(0).standard_normal((32, 64), dtype=np.float32)  # as the block makes it
    norms = namespace["norms"]
    weight = namespace["layer"].weight.detach().numpy()
    assert ((weight != 0).reshape(32, 16, 4).sum(-1) == 2).all()
    wanda = ref_topk_keep(np.abs(dense_w) * norms, 0.7, "row")
    assert np.array_equal(namespace["w"], np.where(wanda, dense_w, 0))
    assert np.array_equal(namespace["keep"], ref_nm_keep(np.abs(namespace["w"]) * norms, 2, 8))


def _readme_pytorch_loop(block, capsys):
    from msp.torch import perplexity
    from torch_models import BlockLM

    model, token_ids = BlockLM(seed=3), _token_ids()
    namespace, printed = _run_readme_block(block, {"model": model, "token_ids": token_ids}, capsys)
    result, layers = namespace["plan"], namespace["layers"]
    assert torch.equal(namespace["calibration"], token_ids[:32])
    assert abs(result.average_sparsity - 0.75) <= 0.001 + 1e-12 and result.names == list(layers)
    assert printed.strip() == result.summary() and all(name in printed for name in layers)
    assert namespace["ratios"] == dict(zip(layers, result.sparsity))
    _assert_holds(layers, result)  # the model holds the plan
    assert perplexity(model, namespace["held_out"]) == pytest.approx(result.fitness, rel=1e-12)


def _readme_one_call(block, capsys):
    from msp.torch import linear_layers
    from torch_models import BlockLM

    model = BlockLM(seed=4)
    namespace, printed = _run_readme_block(block, {"model": model, "token_ids": _token_ids()}, capsys)
    result, layers = namespace["plan"], linear_layers(model)
    assert abs(result.average_sparsity - 0.75) <= 0.001 + 1e-12 and printed.strip() == result.summary()
    assert namespace["ratios"] == dict(zip(layers, result.sparsity)) and Plan.load("plan.json") == result
    _assert_holds(layers, result)


def _readme_gpu(block, capsys):
    from msp.torch import activation_norms, apply_plan, linear_layers
    from torch_models import BlockLM, assert_same, snapshot

    model, token_ids = BlockLM(seed=5), _token_ids()
    reference = BlockLM(seed=5)
    layers = linear_layers(reference)
    expected_norms = activation_norms(reference, layers, token_ids[:32])
    namespace, _ = _run_readme_block(block, {"model": model, "token_ids": token_ids}, capsys)
    assert {p.device.type for p in model.parameters()} == {torch.device(namespace["device"]).type}
    norms = namespace["norms"]  # computed where the model is: the same up to rounding
    assert all(torch.allclose(norms[n], expected_norms[n], rtol=1e-5) for n in layers)
    apply_plan(layers, ["2:8"] * len(layers), "wanda", norms, kernels="native")
    assert_same(model.cpu(), snapshot(reference))  # pruned where the weights were, as the CPU prunes


def _readme_any_module(block, capsys):
    namespace, printed = _run_readme_block(block, {}, capsys)
    result, model = namespace["plan"], namespace["model"]
    assert result.names == ["0", "2"] and abs(result.average_sparsity - 0.5) <= 0.001 + 1e-12
    assert printed.strip() == result.summary()
    for i, sparsity in zip((0, 2), result.sparsity):
        w = model[i].weight.detach()
        assert ((w == 0).sum(1) == int(np.floor(sparsity * w.shape[1]))).all()  # per row, as Wanda prunes


def _readme_search(block, capsys):
    namespace, _ = _run_readme_block(block, {}, capsys)
    search, best, my_loss = namespace["search"], namespace["best"], namespace["my_loss"]
    assert search.done and search.ask() == [] and best.fitness == my_loss(best)
    assert abs(best.average_sparsity - 0.75) <= 0.001 + 1e-12
    run = plan(namespace["sizes"], 0.75, nm_levels(8), sensitivity=namespace["traces"], fitness=my_loss,
               generations=5, progress=False)
    assert run.levels == best.levels and run.evaluations == best.evaluations


def _readme_checkpoint(block, capsys):
    namespace, _ = _run_readme_block(block, {}, capsys)
    search, resumed = namespace["search"], namespace["resumed"]
    assert resumed.best == search.best and resumed.done and resumed.history == search.history
    # The proxy table's own optimum was evaluated: the best is at least as good.
    exact = plan(namespace["sizes"], 0.75, nm_levels(8), method="exact", cost_table=namespace["energy"])
    assert search.best.fitness <= namespace["my_loss"](exact)


def _readme_prune_checkpoint(block, capsys):
    from msp.torch import linear_layers
    from msp.torch.staging import fidelity_token_sets
    from torch_models import BlockLM

    token_ids = _token_ids(rows=128)  # 128 x 10 tokens: 1,280, of which the budgets take 256 and 1,024
    model = BlockLM(seed=7)
    namespace, _ = _run_readme_block(block, {"model": model, "token_ids": token_ids}, capsys)
    result = namespace["plan"]
    assert abs(result.average_sparsity - 0.75) <= 0.001 + 1e-12
    _assert_holds(linear_layers(model), result)
    with msp.Search.load("prune.msps") as saved:
        assert saved.done and saved.best == result and saved.settings.fidelity_levels == 2
        assert saved.progress["cheap_evaluations"] > 0
    # The same call on the same dense model resumes the finished search: besides the Fisher traces
    # and Wanda's norms (what a prior plan runs), only the dense references of the two token sets
    # run; no candidate is scored again.
    calls = []

    def counted(model):
        model.lm_head.register_forward_hook(lambda *_: calls.append(1))
        return model

    msp.torch.prune(counted(BlockLM(seed=7)), token_ids[:128], target=0.75, method="prior", progress=False)
    statistics, calls[:] = len(calls), []
    namespace, _ = _run_readme_block(block, {"model": counted(BlockLM(seed=7)), "token_ids": token_ids}, capsys)
    assert namespace["plan"] == result and namespace["plan"].history == result.history
    sets = fidelity_token_sets(list(token_ids[:128].split(8)), (256, 1024))
    assert [sum(b.numel() for b in s) for s in sets] == [260, 1030]  # whole rows of 10 tokens
    assert len(calls) == statistics + sum(len(s) for s in sets)


def _readme_packed(block, capsys):
    generator = torch.Generator().manual_seed(6)
    layer = torch.nn.Linear(256, 64).to(torch.bfloat16)
    x = torch.randn(3, 256, generator=generator).to(torch.bfloat16)
    dense = layer.weight.detach().clone()
    namespace, printed = _run_readme_block(block, {"layer": layer, "x": x}, capsys)
    msp.prune_nm_(dense, "2:8")
    w, y = namespace["w"], namespace["y"]
    assert torch.equal(w.view(torch.int16), dense.view(torch.int16))  # the weight itself is not pruned
    assert not torch.equal(layer.weight.detach().view(torch.int16), dense.view(torch.int16))
    exact = x.double() @ dense.double().T  # within float32 rounding, then rounded to bfloat16
    assert torch.allclose(y.double(), exact, rtol=2**-8, atol=1e-6 * float(exact.abs().max()))
    assert torch.equal(msp.nm_linear(x, namespace["stored"]).view(torch.int16), y.view(torch.int16))
    assert printed.strip() == f"{64 * 64 * 2 + 64 * 32} bytes instead of {64 * 256 * 2}"


def _readme_compressed_model(block, capsys):
    from msp.torch import PackedLinear
    from torch_models import BlockLM

    model, token_ids = BlockLM(seed=5), _token_ids(4)
    reference = BlockLM(seed=5).double()  # the masked dense model, pruned here with the reference mask
    with torch.no_grad():
        for module in (m for m in reference.modules() if isinstance(m, torch.nn.Linear) and m is not reference.lm_head):
            w = module.weight
            w.mul_(torch.from_numpy(ref_nm_keep(np.abs(w.float().numpy()), 2, 8)))
        exact = reference(token_ids).logits
    namespace, _ = _run_readme_block(block, {"model": model, "make_model": lambda: BlockLM(seed=6),
                                             "token_ids": token_ids}, capsys)
    names = [f"layers.{b}.{n}" for b in range(2) for n in ("up", "down", "mix")]
    assert all(isinstance(model.get_submodule(n), PackedLinear) and str(model.get_submodule(n).level) == "2:8"
               for n in names)
    logits = namespace["logits"]
    assert float((logits.double() - exact).abs().max()) <= 1e-5 * float(exact.abs().max())
    loaded = namespace["loaded"]
    assert all(isinstance(loaded.get_submodule(n), PackedLinear) for n in names)
    with torch.no_grad():
        assert torch.equal(loaded(token_ids).logits.view(torch.int32), logits.view(torch.int32))


def _readme_sparsegpt(block, capsys):
    from sparsegpt_reference import fasterprune

    namespace, _ = _run_readme_block(block, {}, capsys)
    rng = np.random.default_rng(1)  # the block's data, made again
    x = rng.standard_normal((4, 128, 64), dtype=np.float32).reshape(-1, 64).astype(np.float64)
    dense_w = rng.standard_normal((32, 64), dtype=np.float32)
    H = namespace["acc"].gram(0)
    d = np.sqrt(np.diag(x.T @ x))
    assert (np.abs(H - x.T @ x) <= 1e-5 * np.outer(d, d)).all() and namespace["acc"].tokens(0) == 512
    ref_w, ref_keep = fasterprune(torch.from_numpy(dense_w).double(), torch.from_numpy(H).double(), n=2, m=8)
    assert np.array_equal(namespace["keep"], ref_keep.numpy())
    assert np.abs(namespace["w"] - ref_w.numpy()).max() <= 1e-4 * np.abs(dense_w).max()


def _readme_sparsegpt_torch(block, capsys):
    from msp.torch import activation_norms, linear_layers
    from torch_models import BlockLM

    model, token_ids = BlockLM(seed=8), _token_ids()
    dense = {n: m.weight.detach().clone() for n, m in linear_layers(model).items()}
    expected_norms = activation_norms(model, linear_layers(model), token_ids[:32])
    namespace, _ = _run_readme_block(block, {"model": model, "token_ids": token_ids}, capsys)
    layers, grams, result = namespace["layers"], namespace["grams"], namespace["searched"]
    for name, norm in namespace["norms"].items():
        assert torch.allclose(norm, expected_norms[name], rtol=1e-5)
    assert len(list(Path("sparsegpt-db").glob("*.npz"))) == 7 * len(layers)  # 1:8 .. 7:8 of every layer
    assert abs(result.average_sparsity - 0.75) <= 0.001 + 1e-12
    _assert_holds(layers, result)
    for (name, module), level in zip(layers.items(), result.layer_levels):
        w = dense[name].clone()
        if level.n < level.m:
            with msp.OBS(grams[name]) as obs:
                obs.prune_(w, level)
        assert torch.equal(module.weight.detach(), w), name


README_RUNNERS = {  # a line only that block has -> the test that runs it
    'msp.prune_nm_(layer.weight.data, "2:4")': _readme_masking,
    "traces = fisher_traces(model, layers, calibration)": _readme_pytorch_loop,
    "plan = msp.torch.prune(model, token_ids[:32]": _readme_one_call,
    'dense_copies="host"': _readme_gpu,
    "model = nn.Sequential(": _readme_any_module,
    "while candidates := search.ask():": _readme_search,
    'resumed = msp.Search.load("search.msps")': _readme_checkpoint,
    'checkpoint="prune.msps"': _readme_prune_checkpoint,
    "stored = msp.PackedNM(": _readme_packed,
    "acc = msp.GramAccumulator([64])": _readme_sparsegpt,
    "loaded = load_compressed(make_model,": _readme_compressed_model,
    'pruner = Pruner(layers, pruner="sparsegpt", grams=grams,': _readme_sparsegpt_torch,
}


def test_every_python_block_of_the_readme_has_exactly_one_runner():
    blocks = _python_blocks()
    claimed = [[marker for marker in README_RUNNERS if marker in block] for block in blocks]
    assert all(len(markers) == 1 for markers in claimed), claimed  # no block left out, none run twice
    assert sorted(m for markers in claimed for m in markers) == sorted(README_RUNNERS)


@needs_torch
@pytest.mark.parametrize("marker", list(README_RUNNERS))
def test_the_readme_python_blocks_run_as_written(marker, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # blocks may save files
    (block,) = [b for b in _python_blocks() if marker in b]
    README_RUNNERS[marker](block, capsys)


@needs_torch
def test_the_readme_inline_calls_work():
    from msp.torch import linear_layers
    from torch_models import BlockLM

    model = BlockLM(seed=4)
    layers = linear_layers(model)
    sizes = [m.weight.numel() for m in layers.values()]
    weight = next(iter(layers.values())).weight.detach()
    for kind in ("energy", "reconstruction"):
        extra = {"gram": np.eye(weight.shape[1], dtype=np.float32)} if kind == "reconstruction" else {}
        assert msp.cost_table(weight, msp.nm_levels(8), kind=kind, **extra).shape == (8,)
    for method in ("prior", "uniform"):
        assert msp.plan(sizes, 0.5, msp.nm_levels(8), sensitivity=[1.0] * 6, method=method).method == method
    search = msp.Search(sizes, 0.5, msp.nm_levels(8), sensitivity=[1.0] * 6, generations=1)

    def evaluate(candidates):
        return [sum(c.levels) for c in candidates]

    while not search.done:
        search.tell(evaluate(search.ask()))
    assert search.best is not None and search.ask() == []


def test_plans_save_and_load_as_the_readme_says(tmp_path):
    result = msp.plan([10, 20], 0.5, msp.ratio_levels([0.25, 0.5, 0.75]), method="uniform", names=["a", "b"])
    result.save(tmp_path / "plan.json")
    assert msp.Plan.load(tmp_path / "plan.json") == result
    assert msp.Plan.load(tmp_path / "plan.json").to_dict() == {"a": 0.5, "b": 0.5}


# --- the design document's Python contract ------------------------------------------------------------


@needs_torch
def test_the_design_contract_keeps_its_spellings():
    from msp.torch import activation_norms, apply_plan, fisher_traces, linear_layers
    from torch_models import BlockLM, block_batches

    model, batches = BlockLM(seed=6), block_batches(2)
    layers = linear_layers(model, ignore=["lm_head"])
    traces = fisher_traces(model, layers, batches, None)
    norms = activation_norms(model, layers, batches)
    sizes = [m.weight.numel() for m in layers.values()]
    levels = msp.nm_levels(m=8)
    result = msp.plan(sizes, target=0.75, levels=levels, sensitivity=list(traces.values()),
                      fitness=lambda p: float(sum(p.levels)), groups=None, method="search", cost_table=None,
                      generations=2, offspring=4, seed=0, progress=False)
    assert result.nm == [level.pattern for level in result.layer_levels] and len(result.history) == 3
    assert result.fitness == float(sum(result.levels)) and result.sparsity == [levels[k].sparsity for k in result.levels]
    assert result.to_dict(list(layers)) == dict(zip(layers, result.sparsity))
    search = msp.Search(sizes, 0.75, levels, generations=1)
    candidates = search.ask()
    search.tell([1.0] * len(candidates))
    assert search.best is not None
    for criterion in ("magnitude", "wanda"):
        reference = BlockLM(seed=6)
        apply_plan(linear_layers(reference), result, pruner=criterion, norms=norms if criterion == "wanda" else None)
        with pytest.warns(DeprecationWarning, match="use pruner="):
            apply_plan(layers, result, method=criterion, norms=norms if criterion == "wanda" else None)
        for a, b in zip(layers.values(), linear_layers(reference).values()):
            assert torch.equal(a.weight, b.weight)
        with torch.no_grad():
            for a, b in zip(layers.values(), linear_layers(BlockLM(seed=6)).values()):
                a.weight.copy_(b.weight)
