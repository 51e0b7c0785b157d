"""One uniform SparseGPT pass of llm-compressor over the demo model, timed; run by
``examples/bench_database.py`` in llm-compressor's own environment (``.venv-llmcompressor``, made by
``scripts/llmcompressor_env.sh``; it pins another transformers than the demo).

    .venv-llmcompressor/bin/python examples/llmcompressor_pass.py MODEL_CACHE IDS.pt SPARSITY

``MODEL_CACHE`` is the demo's float32 cache of SmolLM2-135M-Instruct (``config.json``, the tokenizer
files and ``model.pt``, see ``demo.load_model``): oneshot validates a model by reloading its config
from a directory, so the model is saved there once with ``save_pretrained`` (untimed). ``IDS.pt``
holds the calibration token ids ``[N, T]``. Prints one JSON line: the seconds of ``oneshot`` with
``SparseGPTModifier(sparsity=SPARSITY)`` on every linear layer but ``lm_head`` (its calibration
forwards included), and the measured sparsity.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def main(cache: str, ids_path: str, sparsity: float) -> None:
    torch.manual_seed(0)
    ids = torch.load(ids_path)
    tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    config = AutoConfig.from_pretrained(cache, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(torch.load(f"{cache}/model.pt", map_location="cpu", weights_only=True))
    model.tie_weights()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
        dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        recipe = [SparseGPTModifier(sparsity=sparsity, targets=names, ignore=[])]
        start = time.perf_counter()
        oneshot(model=model, dataset=dataset, recipe=recipe, processor=tokenizer,
                num_calibration_samples=int(ids.shape[0]), max_seq_length=int(ids.shape[1]))
        seconds = time.perf_counter() - start
    modules = dict(model.named_modules())
    zeros = sum(int((modules[n].weight == 0).sum()) for n in names)
    total = sum(modules[n].weight.numel() for n in names)
    print(json.dumps({"seconds": seconds, "layers": len(names), "sparsity": zeros / total,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
