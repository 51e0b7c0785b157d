"""``msp.Plan``: one level per layer, with the sparsity, N:M pattern and fitness it implies.

A plan is what the planner returns (``msp.plan``), what a fitness function receives, and what
``msp.torch.apply_plan`` applies. It saves to and loads from JSON::

    plan = msp.plan(sizes, target=0.75, sensitivity=traces, fitness=perplexity)
    print(plan.summary(names))
    plan.save("plan.json"); same = msp.Plan.load("plan.json")
    ratios = plan.to_dict(names)          # {module_name: sparsity}, for your own pruning loop

For llm-compressor use ``msp.integrations.llmcompressor.modifiers(plan, layers)``: its modifiers
take no dict, and N:M levels need their own ``mask_structure``.
"""

from __future__ import annotations

import json
import math
import operator
import os
from typing import Any, Iterable, Sequence

from ._convert import integer, optional_real
from .levels import Level

__all__ = ["Plan"]

FORMAT = "msp.plan"
FORMAT_VERSION = 1


def _encode_float(value: float | None) -> Any:
    """JSON has no inf/nan: write them as the strings "inf", "-inf", "nan"."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _decode_float(value: Any, name: str) -> float | None:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return optional_real(value, name)


class Plan:
    """One level per layer of a level set.

    Attributes:
        levels: level index of every layer (0 = the least sparse level of ``level_set``).
        level_set: the levels the indices point into, least sparse first.
        sizes: parameter count of every layer.
        sparsity: sparsity of every layer (from its level).
        nm: ``(n, m)`` of every layer's N:M level, or None for an unstructured level.
        average_sparsity: parameter-weighted average sparsity, sum(size * sparsity) / sum(size).
        fitness: the fitness found for this plan (lower is better), or None.
        history: best fitness after each search generation (the prior grid is generation 0).
        evaluations: fitness evaluations spent to find the plan (full fidelity).
        target: the average sparsity asked for, or None.
        method: how the plan was made ("search", "prior", "exact", "uniform"), or None.
        params: the planner settings (JSON-ready).
        seed: the search seed, or None.
        names: the layer names, one per layer in layer order (e.g. ``list(linear_layers(model))``),
            or None. Saved and loaded with the plan, used by :meth:`to_dict` and :meth:`summary`
            when they are given no names, and checked by ``msp.torch.Pruner.apply``.

    Plans compare equal when every saved field is equal.
    """

    __slots__ = (
        "levels",
        "level_set",
        "sizes",
        "sparsity",
        "nm",
        "average_sparsity",
        "fitness",
        "history",
        "evaluations",
        "target",
        "method",
        "params",
        "seed",
        "names",
    )

    def __init__(
        self,
        levels: Iterable[int],
        level_set: Sequence[Any],
        sizes: Iterable[int],
        *,
        fitness: float | None = None,
        history: Iterable[float] = (),
        evaluations: int = 0,
        target: float | None = None,
        method: str | None = None,
        params: dict | None = None,
        seed: int | None = None,
        names: Iterable[str] | None = None,
    ) -> None:
        """Build a plan and check that its indices fit the level set.

        Raises:
            TypeError: a value of the wrong type (a name that is not a str included).
            ValueError: ``levels`` and ``sizes`` of different lengths, no layers, a size <= 0, an
                index outside the level set, or names that are not one distinct name per layer.
        """
        level_set = [Level.parse(level) for level in level_set]
        levels = [integer(k, f"levels[{i}]") for i, k in enumerate(levels)]
        sizes = [integer(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
        if not levels:
            raise ValueError("a plan needs at least one layer")
        if len(levels) != len(sizes):
            raise ValueError(f"the plan has {len(levels)} levels for {len(sizes)} layer sizes")
        if not level_set:
            raise ValueError("the level set is empty")
        for i, k in enumerate(levels):
            if not 0 <= k < len(level_set):
                raise ValueError(f"levels[{i}] ({k}) is outside the level set [0, {len(level_set) - 1}]")
        for i, s in enumerate(sizes):
            if s <= 0:
                raise ValueError(f"sizes[{i}] ({s}) must be > 0")
        self._fill(levels, LevelTable(level_set, sizes), fitness=fitness, history=history, evaluations=evaluations,
                   target=target, method=method, params=params, seed=seed, names=names)

    @classmethod
    def of_checked(cls, levels: list[int], table: "LevelTable", **fields: Any) -> "Plan":
        """A plan whose indices the library has already checked (the planner's hot path).

        Equal to ``Plan(levels, table.level_set, table.sizes, **fields)`` field for field, without
        re-validating every index and size: ``levels`` must be a list of Python ints within the
        level set.
        """
        plan = cls.__new__(cls)
        plan._fill(levels, table, **fields)
        return plan

    def _fill(self, levels: list[int], table: "LevelTable", *, fitness: Any = None, history: Iterable[float] = (),
              evaluations: Any = 0, target: Any = None, method: Any = None, params: Any = None, seed: Any = None,
              names: Any = None) -> None:
        """Set every field from checked indices; the metadata is checked and normalised here."""
        self.levels = levels
        self.level_set = list(table.level_set)
        self.sizes = list(table.sizes)
        self.sparsity = [table.sparsity[k] for k in levels]
        self.nm = [table.nm[k] for k in levels]
        self.average_sparsity = math.fsum(map(operator.mul, table.sizes, self.sparsity)) / table.total
        self.fitness = optional_real(fitness, "fitness")
        self.history = [float(h) for h in history]
        self.evaluations = integer(evaluations, "evaluations")
        self.target = optional_real(target, "target")
        self.method = None if method is None else str(method)
        self.params = dict(params) if params else {}
        self.seed = None if seed is None else integer(seed, "seed")
        self.names = None if names is None else layer_names(names, len(levels))

    # --- views ------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        """Number of layers."""
        return len(self.levels)

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def layer_levels(self) -> list[Level]:
        """The :class:`Level` of every layer."""
        return [self.level_set[k] for k in self.levels]

    def to_dict(self, names: Iterable[str] | None = None) -> dict[str, float]:
        """The plan as ``{name: sparsity}``: one sparsity per layer name, for a pruning loop of
        your own (or a script that takes per-layer ratios). It drops the N:M pattern: a layer at
        ``2:8`` reads 0.75, the same as 75 % unstructured (``layer_levels`` keeps the levels).

        Not for llm-compressor: its ``sparsity=`` takes a float or a list in its own target order
        (a dict fails its validation), and N:M levels need a ``mask_structure`` per modifier in its
        pruned-count convention. ``msp.integrations.llmcompressor.modifiers(plan, layers)`` writes
        those modifiers.

        Args:
            names: one distinct name per layer, in layer order (a dict such as the one
                ``msp.torch.linear_layers`` returns gives its keys); None uses the plan's own
                :attr:`names`.

        Raises:
            ValueError: a different number of names than layers, a repeated name, or no names
                (None given and the plan has none).
        """
        if names is None:
            if self.names is None:
                raise ValueError("this plan has no layer names: pass names (e.g. list(layers)) or make the plan "
                                 "with names=")
            names = self.names
        return dict(zip(layer_names(names, len(self.levels)), self.sparsity))

    def summary(self, names: Iterable[str] | None = None) -> str:
        """A table a person reads: per layer its index (and name), size, level and sparsity; then totals.

        Args:
            names: optional layer names, one per layer; None uses the plan's own :attr:`names`
                (if any).

        Raises:
            ValueError: a different number of names than layers.
        """
        names = self.names if names is None else [str(n) for n in names]
        if names is not None and len(names) != len(self.levels):
            raise ValueError(f"got {len(names)} names for a plan of {len(self.levels)} layers")
        total = sum(self.sizes)
        header = ["layer"] + (["name"] if names else []) + ["size", "level", "sparsity"]
        rows = []
        for i, (size, k, s) in enumerate(zip(self.sizes, self.levels, self.sparsity)):
            row = [str(i)] + ([names[i]] if names else []) + [f"{size:,}", str(self.level_set[k]), f"{s * 100:.2f}%"]
            rows.append(row)
        total_row = ["total"] + ([""] if names else []) + [f"{total:,}", "", f"{self.average_sparsity * 100:.2f}%"]
        table = [header] + rows + [total_row]
        widths = [max(len(r[c]) for r in table) for c in range(len(header))]
        left = {1} if names else set()  # names read best left-aligned, numbers right-aligned

        def line(row: list[str]) -> str:
            cells = [cell.ljust(w) if c in left else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        counts: dict[str, int] = {}
        for k in self.levels:
            counts[str(self.level_set[k])] = counts.get(str(self.level_set[k]), 0) + 1
        mix = ", ".join(f"{name} x{count}" for name, count in counts.items())
        title = f"Plan: {len(self.levels)} layers, {total:,} parameters"
        if self.method:
            title += f", method {self.method}"
        lines = [title, line(header), rule] + [line(r) for r in rows] + [rule, line(total_row)]
        average = f"average sparsity {self.average_sparsity * 100:.3f}%"
        if self.target is not None:
            average += f" (target {self.target * 100:.3f}%)"
        lines.append(average)
        lines.append(f"levels used: {mix}")
        if self.fitness is not None:
            lines.append(f"fitness {self.fitness:.6g} after {self.evaluations} evaluations")
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [f"layers={len(self.levels)}", f"average_sparsity={self.average_sparsity:.4f}"]
        if self.method is not None:
            parts.append(f"method={self.method!r}")
        if self.fitness is not None:
            parts.append(f"fitness={self.fitness:.6g}")
        return f"Plan({', '.join(parts)})"

    # --- persistence ------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The plan as a JSON-ready dict (what :meth:`save` writes)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "level_set": [level.to_json() for level in self.level_set],
            "sizes": list(self.sizes),
            "levels": list(self.levels),
            "sparsity": list(self.sparsity),
            "average_sparsity": self.average_sparsity,
            "target": self.target,
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "fitness": _encode_float(self.fitness),
            "history": [_encode_float(h) for h in self.history],
            "evaluations": self.evaluations,
            **({} if self.names is None else {"names": list(self.names)}),
        }

    @classmethod
    def from_json(cls, data: Any) -> "Plan":
        """The plan of a :meth:`to_json` dict.

        Raises:
            ValueError: not an msp plan, a newer format version, or inconsistent fields.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f'not an msp plan (expected a JSON object with "format": "{FORMAT}")')
        version = data.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"msp plan format version {version!r} is newer than this msp reads ({FORMAT_VERSION})")
        try:
            return cls(
                data["levels"],
                [Level.from_json(level) for level in data["level_set"]],
                data["sizes"],
                fitness=_decode_float(data.get("fitness"), "fitness"),
                history=[_decode_float(h, "history") for h in data.get("history", [])],
                evaluations=data.get("evaluations", 0),
                target=data.get("target"),
                method=data.get("method"),
                params=data.get("params") or {},
                seed=data.get("seed"),
                names=data.get("names"),
            )
        except KeyError as error:
            raise ValueError(f"msp plan is missing the field {error}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (level set, sizes, levels, target, method, params, seed, fitness,
        history, and the layer names when it has them). The file is replaced atomically: a reader
        never sees half a plan. Plans saved without names (as before names existed) load with
        ``names`` None."""
        path = os.fspath(path)
        text = json.dumps(self.to_json(), indent=1, allow_nan=False)
        temporary = f"{path}.tmp{os.getpid()}"
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                file.write(text + "\n")
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        """Read a plan written by :meth:`save`.

        Raises:
            OSError: the file cannot be read.
            ValueError: not valid JSON or not an msp plan.
        """
        with open(os.fspath(path), encoding="utf-8") as file:
            try:
                data = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f"{os.fspath(path)} is not valid JSON: {error}") from None
        return cls.from_json(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable fields


def layer_names(names: Iterable[str], count: int) -> list[str]:
    """``names`` as a list of ``count`` distinct strings.

    Raises:
        TypeError: a string instead of a sequence, or a name that is not a str.
        ValueError: another count, or a repeated name.
    """
    if isinstance(names, (str, bytes)):
        raise TypeError("names must be a sequence of layer names, not one string")
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be str, got {type(name).__name__}")
    if len(names) != count:
        raise ValueError(f"got {len(names)} names for a plan of {count} layers")
    if len(set(names)) != len(names):
        seen: set = set()
        repeated = next(n for n in names if n in seen or seen.add(n))
        raise ValueError(f"layer name {repeated!r} appears more than once")
    return names


class LevelTable:
    """What every plan over one level set and one list of sizes shares, computed once: the
    validated levels, sizes, each level's sparsity and N:M pattern, and the total size. The
    search builds one and makes its candidate plans with ``Plan.of_checked``."""

    __slots__ = ("level_set", "sizes", "sparsity", "nm", "total")

    def __init__(self, level_set: Sequence[Any], sizes: Iterable[int]) -> None:
        self.level_set = [Level.parse(level) for level in level_set]
        self.sizes = [integer(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
        self.sparsity = [level.sparsity for level in self.level_set]
        self.nm = [level.pattern for level in self.level_set]
        self.total = sum(self.sizes)
