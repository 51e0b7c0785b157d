"""The llm-compressor integration tests: they run in llm-compressor's own environment
(``make test-integrations`` makes it with scripts/llmcompressor_env.sh) and fail, never skip, when
llm-compressor cannot be imported. msp comes from this checkout (``python/``) and its libmsp.so.

A tiny randomly initialised Llama is saved to a temporary directory once (``oneshot`` reloads the
model's config by its ``name_or_path``) and loaded afresh by every test; the tokenizer is an offline
word-level one and the calibration set a few rows of random token ids.
"""

import sys
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = PYTHON_DIR.parent
for path in (PYTHON_DIR, PYTHON_DIR / "tests"):  # the msp package, and readme_blocks shared with tests/
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import llmcompressor  # noqa: E402,F401  (a missing package fails the run here, never skips it)
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

VOCAB = 128
SAMPLES = 8
TOKENS = 32


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny Llama: 2 blocks of 7 linears; down_proj has 192 in_features, two SparseGPT blocks."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def model(model_dir):
    return LlamaForCausalLM.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def tokenizer():
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", pad_token="t0")


@pytest.fixture(scope="session")
def token_ids():
    return torch.randint(0, VOCAB, (SAMPLES, TOKENS), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def dataset(token_ids):
    return Dataset.from_dict({"input_ids": token_ids.tolist(), "attention_mask": torch.ones_like(token_ids).tolist()})
