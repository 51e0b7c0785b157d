"""msp.integrations.llmcompressor against the real llm-compressor: ``oneshot`` with the modifiers
of an msp plan prunes every layer of a tiny Llama exactly as planned, with SparseGPT and Wanda, for
unstructured, mixed N:8 and mixed-kind plans.

"Exactly" is checked per layer against counts worked out here from the plan: N:M levels keep ``n``
of every ``m`` weights along each row; Wanda's unstructured levels prune ``floor(s * cols)`` weights
in every row (msp's own row-scope count, checked against ``msp.prune_topk_``); SparseGPT's
unstructured levels prune ``floor(s * rows * block_cols) + 1`` weights in every block of
``block_size`` columns, llm-compressor's inclusive threshold (``sgpt_sparsify.py``). Dense layers and
``lm_head`` stay bit-identical; Wanda leaves the weights it keeps unchanged.
"""

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PYTHON_DIR, REPO_DIR, SAMPLES, TOKENS
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from readme_blocks import python_blocks

import msp
from msp.integrations.llmcompressor import modifiers
from msp.torch import fisher_traces, linear_layers

BLOCK = 128  # SparseGPTModifier's default block_size
CLASSES = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}


def run_oneshot(model, dataset, tokenizer, recipe):
    oneshot(model=model, dataset=dataset, recipe=recipe, processor=tokenizer, num_calibration_samples=SAMPLES,
            max_seq_length=TOKENS)


def dense_weights(model):
    return {name: module.weight.detach().clone() for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)}


def msp_plan(model, token_ids, levels, target):
    """A plan msp makes for the model: the Fisher prior of its traces on the calibration ids."""
    layers = linear_layers(model)
    traces = fisher_traces(model, layers, list(token_ids.split(2)), progress=False)
    sizes = [module.weight.numel() for module in layers.values()]
    plan = msp.plan(sizes, target, levels, sensitivity=list(traces.values()), method="prior")
    assert len(set(plan.levels)) >= 2  # a mixed plan, not a uniform one
    return layers, plan


def assert_as_planned(model, dense, planned, pruner, block=BLOCK):
    """Every layer of ``planned`` ({name: Level}) holds its level; every other linear is unchanged."""
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        w, before = module.weight.detach(), dense[name]
        level = planned.get(name)
        if level is None or level.sparsity == 0:
            assert torch.equal(w, before), name
            continue
        rows, cols = w.shape
        pruned = w == 0
        if level.m:
            kept = (~pruned).reshape(rows, cols // level.m, level.m).sum(-1)
            assert (kept == level.n).all(), (name, str(level))
        elif pruner == "wanda":
            assert (pruned.sum(1) == int(cols * level.sparsity)).all(), (name, str(level))
            reference = before.clone()
            msp.prune_topk_(reference, level.sparsity, scope="row")  # msp's own count for the same level
            assert int(pruned.sum()) == int((reference == 0).sum()), name
        else:
            for start in range(0, cols, block):
                part = pruned[:, start:start + block]
                assert int(part.sum()) == int(part.numel() * level.sparsity) + 1, (name, start, str(level))
        if pruner == "wanda":
            assert torch.equal(w[~pruned], before[~pruned]), name  # Wanda only zeroes weights


def planned_levels(layers, plan):
    return dict(zip(layers, plan.layer_levels))


# --- oneshot applies msp plans exactly ------------------------------------------------------------


@pytest.mark.parametrize("pruner", ["sparsegpt", "wanda"])
def test_an_unstructured_plan_is_one_modifier_and_applied_exactly(pruner, model, dataset, tokenizer, token_ids):
    layers, plan = msp_plan(model, token_ids, msp.ratio_levels([0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), 0.55)
    recipe = modifiers(plan, layers, pruner=pruner, model=model)
    sparse = [(name, s) for name, s in zip(layers, plan.sparsity) if s > 0]
    assert len(recipe) == 1 and type(recipe[0]) is CLASSES[pruner]
    assert recipe[0].targets == [name for name, _ in sparse] and recipe[0].sparsity == [s for _, s in sparse]
    dense = dense_weights(model)
    run_oneshot(model, dataset, tokenizer, recipe)
    assert_as_planned(model, dense, planned_levels(layers, plan), pruner)


@pytest.mark.parametrize("pruner", ["sparsegpt", "wanda"])
def test_a_mixed_n8_plan_is_one_modifier_per_level_and_applied_exactly(pruner, model, dataset, tokenizer, token_ids):
    layers, plan = msp_plan(model, token_ids, msp.nm_levels(8), 0.625)
    recipe = modifiers(plan, layers, pruner=pruner, model=model)
    used = sorted({level for level in plan.layer_levels if level.n < level.m}, key=lambda level: level.sparsity)
    assert [r.mask_structure for r in recipe] == [f"{8 - level.n}:8" for level in used]  # counts the pruned
    for modifier, level in zip(recipe, used):
        assert modifier.sparsity == level.sparsity
        assert modifier.targets == [name for name, lv in planned_levels(layers, plan).items() if lv == level]
    dense = dense_weights(model)
    run_oneshot(model, dataset, tokenizer, recipe)
    assert_as_planned(model, dense, planned_levels(layers, plan), pruner)


@pytest.mark.parametrize("pruner", ["sparsegpt", "wanda"])
def test_a_plan_mixing_nm_unstructured_and_dense_levels(pruner, model, dataset, tokenizer):
    layers = linear_layers(model)
    level_set = ["8:8", 0.3, "4:8", 0.7, "2:8"]
    plan = msp.Plan([i % len(level_set) for i in range(len(layers))], level_set,
                    [m.weight.numel() for m in layers.values()])
    recipe = modifiers(plan, layers, pruner=pruner, model=model)
    assert [r.mask_structure for r in recipe] == ["0:0", "4:8", "6:8"]
    assert sorted(recipe[0].sparsity) == [0.3] * 3 + [0.7] * 3
    assert not {name for name, level in planned_levels(layers, plan).items() if level.sparsity == 0} & {
        target for r in recipe for target in r.targets}  # dense layers are left out
    dense = dense_weights(model)
    run_oneshot(model, dataset, tokenizer, recipe)
    assert_as_planned(model, dense, planned_levels(layers, plan), pruner)


def test_with_the_model_the_layers_may_come_in_any_order(model, dataset, tokenizer):
    """llm-compressor indexes sparsity=[...] in the model's module order; model= sorts the layers."""
    ordered = linear_layers(model)
    names = list(ordered)
    random.Random(3).shuffle(names)
    shuffled = {name: ordered[name] for name in names}
    level_set = msp.ratio_levels([0.2, 0.4, 0.6])
    plan = msp.Plan([i % 3 for i in range(len(names))], level_set, [ordered[n].weight.numel() for n in names])
    planned = planned_levels(shuffled, plan)
    recipe = modifiers(plan, shuffled, pruner="sparsegpt", model=model, dampening_frac=0.05, block_size=32)
    assert recipe[0].targets == list(ordered) and recipe[0].sparsity == [planned[n].sparsity for n in ordered]
    assert recipe[0].dampening_frac == 0.05 and recipe[0].block_size == 32
    dense = dense_weights(model)
    run_oneshot(model, dataset, tokenizer, recipe)
    assert_as_planned(model, dense, planned, "sparsegpt", block=32)
    # Without the model, the layers' own order is taken as the model's.
    assert modifiers(plan, shuffled, pruner="wanda")[0].targets == names


def test_a_plan_with_only_dense_layers_needs_no_modifier(model):
    layers = linear_layers(model)
    plan = msp.Plan([0] * len(layers), ["8:8", "4:8"], [m.weight.numel() for m in layers.values()])
    assert modifiers(plan, layers, pruner="wanda", model=model) == []


def test_the_readme_block_runs_as_written(model, dataset, tokenizer, token_ids):
    (block,) = python_blocks((REPO_DIR / "README.md").read_text(), llmcompressor=True)
    layers, plan = msp_plan(model, token_ids, msp.nm_levels(8), 0.625)
    dense = dense_weights(model)
    namespace = {"model": model, "layers": layers, "plan": plan, "dataset": dataset, "tokenizer": tokenizer}
    exec(compile(block, "README.md", "exec"), namespace)
    assert_as_planned(model, dense, planned_levels(layers, plan), "sparsegpt")


# --- bad input ------------------------------------------------------------------------------------


def _plan_for(layers, levels):
    return msp.Plan(levels, ["8:8", 0.5, "4:8"], [m.weight.numel() for m in layers.values()])


def test_bad_arguments_raise_before_any_modifier_is_made(model):
    layers = linear_layers(model)
    plan = _plan_for(layers, [1] * len(layers))
    with pytest.raises(ValueError, match="pruner must be one of 'sparsegpt', 'wanda'"):
        modifiers(plan, layers, pruner="magnitude")
    for key in ("sparsity", "targets", "ignore", "mask_structure", "sparsity_profile"):
        with pytest.raises(ValueError, match=f"{key} come.* from the plan"):
            modifiers(plan, layers, **{key: None})
    with pytest.raises(TypeError, match="must be an msp.Plan"):
        modifiers([0.5] * len(layers), layers)
    with pytest.raises(TypeError, match="must be a mapping"):
        modifiers(plan, list(layers.values()))
    with pytest.raises(ValueError, match="the plan has 14 layers but 13"):
        modifiers(plan, dict(list(layers.items())[1:]))
    swapped = dict(list(layers.items())[::-1])  # other sizes in the same places
    with pytest.raises(ValueError, match="made for other layers"):
        modifiers(plan, swapped)
    with pytest.raises(TypeError, match=r"'embed' \(Embedding\) is not an nn.Linear"):
        modifiers(_plan_for({"embed": model.model.embed_tokens}, [1]), {"embed": model.model.embed_tokens})
    q = model.model.layers[0].self_attn.q_proj
    with pytest.raises(ValueError, match="layers 'a' and 'b' are the same module"):
        modifiers(_plan_for({"a": q, "b": q}, [1, 1]), {"a": q, "b": q})


def test_layers_must_be_the_models_modules(model, model_dir):
    layers = linear_layers(model)
    plan = _plan_for(layers, [1] * len(layers))
    other = type(model).from_pretrained(model_dir)
    with pytest.raises(ValueError, match="'model.layers.0.self_attn.q_proj' is not the model's module"):
        modifiers(plan, layers, model=other)
    renamed = {("x." + name if i == 0 else name): module for i, (name, module) in enumerate(layers.items())}
    with pytest.raises(ValueError, match="'x.model.layers.0.self_attn.q_proj' is not the model's module"):
        modifiers(plan, renamed, model=model)


def test_names_llmcompressor_reads_as_more_modules_are_refused():
    """compressed-tensors matches a target by name or by class name: a module named "Linear"
    would make the modifier prune every nn.Linear of the model."""
    model = torch.nn.Module()
    model.Linear, model.other = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    plan = msp.Plan([1], [0.0, 0.5], [64])
    with pytest.raises(ValueError, match=r"reads the layer names \['Linear'\] as more modules than planned \(other\)"):
        modifiers(plan, {"Linear": model.Linear}, model=model)
    assert modifiers(plan, {"other": model.other}, model=model)[0].targets == ["other"]


def test_nm_groups_must_tile_the_rows_and_sparsegpt_blocks():
    layers = {"a": torch.nn.Linear(12, 4), "b": torch.nn.Linear(256, 4)}
    plan = msp.Plan([1, 0], ["8:8", "2:8"], [48, 1024])
    with pytest.raises(ValueError, match="'a' has in_features = 12, not divisible by M = 8"):
        modifiers(plan, layers)
    plan = msp.Plan([0, 1], ["8:8", "2:8"], [48, 1024])
    with pytest.raises(ValueError, match="block_size \\(100\\) is not a multiple of M = 8"):
        modifiers(plan, layers, pruner="sparsegpt", block_size=100)
    assert [r.mask_structure for r in modifiers(plan, layers, pruner="wanda")] == ["6:8"]
