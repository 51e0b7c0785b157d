"""msp.plans: the Plan class (attributes, to_dict, summary, JSON persistence), checked against
values written out here."""

import json
import math
import pickle

import numpy as np
import pytest

from msp import plan
from msp.levels import nm_levels, ratio_levels
from msp.plans import Plan
from planning_reference import average


def _sample_plan():
    levels = nm_levels(8)
    return Plan([0, 6, 4, 6], levels, [100, 300, 200, 400], fitness=12.5, history=[20.0, 14.0, 12.5],
                evaluations=30, target=0.5, method="search", params={"generations": 2, "groups": None}, seed=7)


def test_plan_attributes():
    p = _sample_plan()
    assert p.levels == [0, 6, 4, 6]
    assert p.sparsity == [0.0, 0.75, 0.5, 0.75]
    assert p.nm == [(8, 8), (2, 8), (4, 8), (2, 8)]
    assert p.average_sparsity == pytest.approx((0 + 300 * 0.75 + 200 * 0.5 + 400 * 0.75) / 1000)
    assert len(p) == 4
    unstructured = Plan([1, 0], ratio_levels([0.5, 0.7]), [10, 10])
    assert unstructured.nm == [None, None] and unstructured.sparsity == [0.7, 0.5]
    assert unstructured.fitness is None and unstructured.history == []
    with pytest.raises(ValueError):
        Plan([0, 9], nm_levels(8), [1, 1])
    with pytest.raises(ValueError):
        Plan([0, 1], nm_levels(8), [1])
    with pytest.raises(ValueError):
        Plan([], nm_levels(8), [])


def test_to_dict():
    p = _sample_plan()
    names = ["q", "k", "v", "o"]
    assert p.to_dict(names) == {"q": 0.0, "k": 0.75, "v": 0.5, "o": 0.75}
    assert p.to_dict({"q": None, "k": None, "v": None, "o": None}) == p.to_dict(names)  # a dict's keys
    with pytest.raises(ValueError, match="3 names"):
        p.to_dict(names[:3])
    with pytest.raises(ValueError, match="more than once"):
        p.to_dict(["q", "k", "q", "o"])


def test_summary_is_a_readable_table():
    p = _sample_plan()
    text = p.summary(["model.q_proj", "model.k_proj", "model.v_proj", "model.o_proj"])
    lines = text.splitlines()
    assert "4 layers" in lines[0] and "1,000 parameters" in lines[0]
    assert "name" in lines[1] and "size" in lines[1] and "level" in lines[1] and "sparsity" in lines[1]
    row = next(line for line in lines if "model.k_proj" in line)
    assert "300" in row and "2:8" in row and "75.00%" in row
    assert any(line.startswith("total") and "1,000" in line and "62.50%" in line for line in lines)
    assert "target 50.000%" in text and "fitness 12.5" in text
    plain = Plan([1, 0], ratio_levels([0.5, 0.7]), [10, 30]).summary()
    assert "70%" in plain and "55.00%" in plain
    with pytest.raises(ValueError):
        p.summary(["a"])


def test_save_load_round_trip(tmp_path):
    p = _sample_plan()
    p.history.append(math.inf)
    path = tmp_path / "plan.json"
    p.save(path)
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert data["levels"] == [0, 6, 4, 6]
    assert data["level_set"][6] == {"sparsity": 0.75, "n": 2, "m": 8}
    assert data["sizes"] == [100, 300, 200, 400]
    assert data["target"] == 0.5 and data["method"] == "search" and data["seed"] == 7
    assert data["params"] == {"generations": 2, "groups": None}
    loaded = Plan.load(str(path))
    assert loaded == p
    assert loaded.history[-1] == math.inf
    assert loaded.level_set == p.level_set and loaded.fitness == 12.5 and loaded.evaluations == 30
    assert pickle.loads(pickle.dumps(p)) == p


def test_save_load_of_a_planned_plan(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.integers(10, 100, 6)]
    levels = ratio_levels([0.2, 0.5, 0.8])
    target = average(sizes, levels, [1, 1, 2, 2, 0, 0])
    result = plan(sizes, target, levels, groups=["a", "a", "b", "b", "c", "c"],
                  max_level=[1, 1, 2, 2, 2, 2], fitness=lambda p: sum(p.sparsity), progress=False, generations=3)
    result.save(tmp_path / "p.json")
    loaded = Plan.load(tmp_path / "p.json")
    assert loaded == result
    assert loaded.params["groups"] == [0, 0, 1, 1, 2, 2]
    assert loaded.params["max_level"] == [1, 1, 2, 2, 2, 2]
    assert loaded.params["tolerance"] == 0.001


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"levels": [0]}')
    with pytest.raises(ValueError, match="not an msp plan"):
        Plan.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError):
        Plan.load(path)
    data = _sample_plan().to_json()
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version"):
        Plan.load(path)


# --- layer names ----------------------------------------------------------------------------------

NAMES = ["model.q_proj", "model.k_proj", "model.v_proj", "model.o_proj"]


def _named_plan():
    levels = nm_levels(8)
    return Plan([0, 6, 4, 6], levels, [100, 300, 200, 400], fitness=1.5, target=0.5, method="prior", names=NAMES)


def test_a_plan_carries_its_layer_names():
    p = _named_plan()
    assert p.names == NAMES
    assert p.to_dict() == {"model.q_proj": 0.0, "model.k_proj": 0.75, "model.v_proj": 0.5, "model.o_proj": 0.75}
    assert p.to_dict(["a", "b", "c", "d"]) == {"a": 0.0, "b": 0.75, "c": 0.5, "d": 0.75}  # given names win
    assert p.summary() == p.summary(NAMES) and "model.k_proj" in p.summary()
    assert p.summary(["a", "b", "c", "d"]) != p.summary()
    with pytest.raises(ValueError, match="no layer names"):
        _sample_plan().to_dict()
    with pytest.raises(ValueError, match="got 2 names for a plan of 3 layers"):
        Plan([0, 1, 2], nm_levels(8), [1, 1, 1], names=["a", "b"])
    with pytest.raises(ValueError, match="more than once"):
        Plan([0, 1], nm_levels(8), [1, 1], names=["a", "a"])
    with pytest.raises(TypeError, match="must be str"):
        Plan([0, 1], nm_levels(8), [1, 1], names=["a", 2])
    with pytest.raises(TypeError, match="not one string"):
        Plan([0, 1], nm_levels(8), [1, 1], names="ab")


def test_names_are_saved_and_loaded_and_old_plans_load_without_them(tmp_path):
    p = _named_plan()
    p.save(tmp_path / "named.json")
    data = json.loads((tmp_path / "named.json").read_text())
    assert data["names"] == NAMES and data["version"] == 1
    loaded = Plan.load(tmp_path / "named.json")
    assert loaded == p and loaded.names == NAMES and loaded.to_dict() == p.to_dict()
    assert pickle.loads(pickle.dumps(p)).names == NAMES
    # A plan saved before plans had names: the same file without the field.
    del data["names"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Plan.load(tmp_path / "old.json")
    assert old.names is None and old.levels == p.levels and old != p
    assert "names" not in old.to_json()


@pytest.mark.parametrize("method", ["search", "prior", "uniform", "exact"])
def test_the_planner_gives_plans_the_names_it_is_given(method):
    sizes, levels = [10, 20, 30], ratio_levels([0.0, 0.5, 0.75])
    names = ["a", "b", "c"]
    seen = []

    def fitness(candidate):
        seen.append(candidate.names)
        return sum(candidate.levels)

    extra = {"cost_table": [[0, 1, 2]] * 3} if method == "exact" else {}
    result = plan(sizes, 0.5, levels, sensitivity=[1.0, 2.0, 3.0], fitness=fitness, method=method, names=names,
                  progress=False, generations=2, **extra)
    assert result.names == names and result.to_dict() == dict(zip(names, result.sparsity))
    assert seen and all(n == names for n in seen)  # candidates carry them too
    assert plan(sizes, 0.5, levels, sensitivity=[1.0, 2.0, 3.0], method="prior").names is None
    with pytest.raises(ValueError, match="2 names"):
        plan(sizes, 0.5, levels, sensitivity=[1.0, 2.0, 3.0], fitness=fitness, method=method, names=names[:2],
             progress=False, **extra)
