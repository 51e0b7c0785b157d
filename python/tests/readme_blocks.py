"""The README's ```python blocks and where each one runs: one rule for both test suites.

A block whose first line is :data:`LLMCOMPRESSOR_MARKER` needs llm-compressor, so it runs in that
package's environment (``python/tests_llmcompressor``, ``make test-integrations``); every other
block runs in the main test suite (``python/tests/test_public_api.py``).
"""

import re

LLMCOMPRESSOR_MARKER = "# runs in llm-compressor's environment"
"""The first line of a README block that needs llm-compressor."""


def python_blocks(readme: str, llmcompressor: bool = False) -> list[str]:
    """The ```python blocks of ``readme`` that need llm-compressor (``llmcompressor=True``) or not."""
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    return [block for block in blocks if block.startswith(LLMCOMPRESSOR_MARKER) == llmcompressor]
