"""llm-compressor (PyPI ``llmcompressor``): the modifiers that apply an msp plan.

llm-compressor's one-shot ``SparseGPTModifier`` and ``WandaPruningModifier`` prune with their own
criteria; this module turns a plan into a recipe for them, so its ``oneshot`` prunes every layer at
the level msp planned::

    from llmcompressor import oneshot
    from msp.integrations.llmcompressor import modifiers

    layers = msp.torch.linear_layers(model)              # the layers the plan was made for
    recipe = modifiers(plan, layers, pruner="sparsegpt", model=model)
    oneshot(model=model, dataset=dataset, recipe=recipe, processor=tokenizer)

How the plan is written (llm-compressor 0.14.0.1, the version ``make test-integrations`` runs):

- Unstructured levels: one modifier whose ``targets`` are the exact module names and whose
  ``sparsity`` is a list in llm-compressor's target order, the model's module order (its
  ``match_named_modules``; a ``{name: sparsity}`` dict is rejected by its validation).
- N:M levels: llm-compressor takes one ``mask_structure`` per modifier and counts the weights
  *pruned* in it, so msp's ``2:8`` (2 kept of every 8) is its ``"6:8"``. One modifier per distinct
  N:M level, its ``targets`` the exact names of that level's layers. A plan mixing N:M and
  unstructured levels gets both kinds of modifier.
- Dense layers (``n == m``, or 0 %) are left out: no modifier targets them.

What "exactly" means, measured against the real package: Wanda prunes ``floor(sparsity * cols)``
weights in every row, msp's own row-scope count; with N:M levels both pruners keep exactly ``n`` of
every ``m`` weights along ``in_features``. llm-compressor's unstructured SparseGPT ranks weights in
blocks of ``block_size`` columns (128 by default) with an inclusive threshold, so it prunes
``floor(sparsity * rows * block_cols) + 1`` weights in every block, one more than the plan's count
per block; the plan's sparsity is passed unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..levels import Level
from ..plans import Plan

__all__ = ["modifiers", "PRUNERS"]

PRUNERS = ("sparsegpt", "wanda")
"""The llm-compressor pruners: ``SparseGPTModifier`` and ``WandaPruningModifier``."""

_PLANNED = ("sparsity", "targets", "ignore", "mask_structure", "sparsity_profile", "owl_m", "owl_lmbda")
_INSTALL = "pip install llmcompressor (msp's integration is tested with llmcompressor==0.14.0.1)"


def _modifier_classes() -> dict[str, type]:
    """llm-compressor's modifier class of every pruner; ``ImportError`` naming the pip package
    when llm-compressor is not installed."""
    try:
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    except ImportError as error:
        raise ImportError(f"msp.integrations.llmcompressor needs llm-compressor: {_INSTALL}") from error
    return {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}


def _check_arguments(plan: Any, pruner: Any, modifier_kwargs: dict[str, Any]) -> None:
    """Raise unless the pruner is known, the plan is a plan, and no setting the plan owns is passed."""
    if not isinstance(pruner, str) or pruner not in PRUNERS:
        raise ValueError(f"pruner must be one of {', '.join(map(repr, PRUNERS))}, got {pruner!r}")
    planned = [key for key in _PLANNED if key in modifier_kwargs]
    if planned:
        raise ValueError(
            f"{', '.join(planned)} come(s) from the plan; pass only the pruner's other settings "
            f"(e.g. dampening_frac, block_size)"
        )
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be an msp.Plan, got {type(plan).__name__}")


def _ordered_layers(plan: Plan, layers: Any, model: Any) -> list[tuple[str, Any, Level]]:
    """``[(name, module, level)]`` in llm-compressor's target order, every layer checked against
    the plan (and against the model when one is given)."""
    import torch  # llm-compressor is installed, so torch is

    if not isinstance(layers, Mapping):
        raise TypeError(f"layers must be a mapping {{name: nn.Linear}} (msp.torch.linear_layers(model)), "
                        f"got {type(layers).__name__}")
    if len(layers) != plan.num_layers:
        raise ValueError(f"the plan has {plan.num_layers} layers but {len(layers)} layers were given")
    entries, owners = [], {}
    for i, ((name, module), size, level) in enumerate(zip(layers.items(), plan.sizes, plan.layer_levels)):
        if not isinstance(name, str):
            raise TypeError(f"layer names must be str (module names), got {type(name).__name__}")
        if not isinstance(module, torch.nn.Linear):
            raise TypeError(f"layer {name!r} ({type(module).__name__}) is not an nn.Linear, which these pruners take")
        if id(module) in owners:
            raise ValueError(f"layers {owners[id(module)]!r} and {name!r} are the same module")
        owners[id(module)] = name
        if module.weight.numel() != size:
            raise ValueError(
                f"the plan's layer {i} has {size} parameters but layer {name!r} has {module.weight.numel()}; "
                f"the plan was made for other layers (or another order)"
            )
        entries.append((name, module, level))
    if model is None:
        return entries
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    for name, module, _ in entries:
        if name not in position or model.get_submodule(name) is not module:
            raise ValueError(f"layer {name!r} is not the model's module of that name")
    return sorted(entries, key=lambda entry: position[entry[0]])


def _check_groups(entries: list[tuple[str, Any, Level]], block_size: int | None) -> None:
    """N:M groups must tile every row as msp's do: M divides ``in_features`` and, for SparseGPT
    (``block_size`` given), its column blocks, where its groups restart."""
    for name, module, level in entries:
        if not level.m or level.n == level.m:
            continue
        cols = module.weight.shape[1]
        if cols % level.m:
            raise ValueError(f"layer {name!r} has in_features = {cols}, not divisible by M = {level.m} of its "
                             f"level {level}")
        if block_size is not None and cols > block_size and block_size % level.m:
            raise ValueError(
                f"SparseGPT's block_size ({block_size}) is not a multiple of M = {level.m}: its N:M groups "
                f"would restart at every block of layer {name!r} (in_features = {cols}); pick a block_size "
                f"divisible by {level.m}"
            )


def _verify_targets(model: Any, recipe: list) -> None:
    """Raise unless llm-compressor's own matcher reads each modifier's targets as exactly its
    layers (a module name could also read as a class name, or as a regex after ``re:``)."""
    from compressed_tensors.utils import match_named_modules

    for modifier in recipe:
        extra = [name for name, _ in match_named_modules(model, modifier.targets) if name not in modifier.targets]
        if extra:
            raise ValueError(
                f"llm-compressor's matcher reads the layer names {modifier.targets} as more modules than "
                f"planned ({', '.join(extra[:4])}): a name equals a module class name or starts with 're:'"
            )


def modifiers(plan: Plan, layers: Mapping[str, Any], pruner: str = "sparsegpt", *, model: Any = None,
              **modifier_kwargs: Any) -> list:
    """The llm-compressor modifiers that prune every layer at its planned level.

    Args:
        plan: the ``msp.Plan`` to apply.
        layers: the ``{name: nn.Linear}`` the plan was made for, in the plan's layer order, named
            as in the model (``msp.torch.linear_layers(model)``).
        pruner: ``"sparsegpt"`` (``SparseGPTModifier``) or ``"wanda"`` (``WandaPruningModifier``).
        model: the model the layers belong to. When given, the layers are written in its module
            order (llm-compressor's target order), each one must be the model's module of its name,
            and llm-compressor's own matcher must read every modifier's targets as exactly its
            layers. Without it, ``layers`` must already be in the model's module order, as
            ``linear_layers`` returns them.
        **modifier_kwargs: the pruner's other settings, passed to every modifier (for example
            ``dampening_frac`` or ``block_size`` of SparseGPT). ``sparsity``, ``targets``,
            ``ignore``, ``mask_structure`` and the OWL settings come from the plan.

    Returns:
        A list of modifiers for ``oneshot(recipe=...)``: one for the unstructured layers (if any),
        then one per distinct N:M level, least sparse first; empty when every layer is dense.

    Raises:
        ImportError: llm-compressor is not installed (the message names the pip package).
        TypeError: a plan that is not an ``msp.Plan``, layers that are not a mapping of
            ``nn.Linear`` modules.
        ValueError: an unknown pruner; a setting the plan owns in ``modifier_kwargs``; a plan
            made for other layers (count or sizes); one module under two names; an N:M level whose
            M does not divide a layer's ``in_features`` (or SparseGPT's ``block_size``); with
            ``model``, a layer that is not the model's module of its name, or a name its matcher
            reads as more modules.
    """
    classes = _modifier_classes()
    _check_arguments(plan, pruner, modifier_kwargs)
    cls = classes[pruner]
    entries = _ordered_layers(plan, layers, model)
    block_size = None
    if pruner == "sparsegpt":
        block_size = int(modifier_kwargs.get("block_size", cls.model_fields["block_size"].default))
    _check_groups(entries, block_size)

    unstructured = [(name, level.sparsity) for name, _, level in entries if not level.m and level.sparsity > 0]
    by_level: dict[Level, list[str]] = {}
    for name, _, level in entries:
        if level.m and level.n < level.m:
            by_level.setdefault(level, []).append(name)
    recipe = []
    if unstructured:
        recipe.append(cls(targets=[name for name, _ in unstructured], sparsity=[s for _, s in unstructured],
                          ignore=[], **modifier_kwargs))
    for level in sorted(by_level, key=lambda level: level.sparsity):
        pruned = f"{level.m - level.n}:{level.m}"  # llm-compressor counts the pruned weights of each group
        recipe.append(cls(targets=by_level[level], sparsity=level.sparsity, mask_structure=pruned, ignore=[],
                          **modifier_kwargs))
    if model is not None:
        _verify_targets(model, recipe)
    return recipe
