"""examples/distributed_search.py: the search with fitness on 2 torch.distributed processes (gloo,
loopback) returns the same plan as the single-process ``msp.plan`` with the same seed.

The model is built here (a small residual MLP language model, no download); the worker processes
import this module to build their copy, so it must stay importable by name.
"""

import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import distributed_search  # noqa: E402
import msp  # noqa: E402

VOCAB, DIM, T = 53, 16, 12


class SmallLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(DIM, 2 * DIM), "down": nn.Linear(2 * DIM, DIM), "mix": nn.Linear(DIM, DIM)})
            for _ in range(3)
        )
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.layers:
            h = h + block["down"](torch.tanh(block["up"](h)))
            h = torch.tanh(block["mix"](h))
        return types.SimpleNamespace(logits=self.lm_head(h))


def small_setup():
    """Every process gets the same model and batches."""
    torch.manual_seed(0)
    model = SmallLM().eval()
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, VOCAB, (2, T), generator=g) for _ in range(3)]
    fitness_batches = [torch.randint(0, VOCAB, (2, T), generator=g)]
    return model, calibration, fitness_batches


def failing_setup():
    """Like small_setup, but on rank 1 the model fails once it is pruned: inside the fitness."""
    model, calibration, batches = small_setup()
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
        layer = model.layers[2]["mix"]

        def hook(module, args, output):
            if (module.weight == 0).any():
                raise ValueError("rank 1 broke")

        layer.register_forward_hook(hook)
    return model, calibration, batches


@pytest.mark.parametrize("pruner,levels,target", [("wanda", None, 0.75), ("magnitude", [0.3, 0.5, 0.6, 0.7, 0.8], 0.6)])
def test_two_processes_find_the_single_process_plan(pruner, levels, target):
    job = distributed_search.Job(setup=small_setup, target=target, levels=levels, pruner=pruner,
                                 settings=msp.SearchSettings(generations=3, offspring=5, seed=7))
    distributed = distributed_search.launch(job, world_size=2)
    single = distributed_search.single_process(job)
    assert distributed.levels == single.levels
    assert distributed.fitness == single.fitness
    assert distributed.history == single.history
    assert distributed.evaluations == single.evaluations > 5  # an odd batch split over 2 ranks
    assert abs(distributed.average_sparsity - target) <= 0.001 + 1e-12


def test_a_failing_rank_stops_every_rank():
    job = distributed_search.Job(setup=failing_setup, settings=msp.SearchSettings(generations=2, offspring=4))
    with pytest.raises(Exception, match="rank 1 broke"):
        distributed_search.launch(job, world_size=2)
