"""msp.integrations without the tools installed: the package imports, and calling an integration
raises an ImportError naming the pip package. (With llm-compressor installed, its integration is
tested in python/tests_llmcompressor, which ``make test-integrations`` runs in its own environment;
README blocks that need it are run there, by the rule of readme_blocks.py.)"""

import subprocess
import sys

from conftest import PYTHON_DIR, REPO_DIR
from readme_blocks import LLMCOMPRESSOR_MARKER, python_blocks


def test_without_llmcompressor_modifiers_raises_an_import_error_naming_the_package():
    # sys.modules[name] = None makes `import name` fail as if the package were not installed.
    code = (
        "import sys; sys.modules['llmcompressor'] = None\n"
        "import msp\n"
        "from msp.integrations.llmcompressor import modifiers\n"
        "plan = msp.Plan([0], ['50%'], [4])\n"
        "try:\n"
        "    modifiers(plan, {})\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error, '|', type(error.__cause__).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PYTHON_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "ImportError msp.integrations.llmcompressor needs llm-compressor: pip install llmcompressor "
        "(msp's integration is tested with llmcompressor==0.14.0.1) | ModuleNotFoundError"
    )


def test_the_tested_version_is_the_pinned_one():
    from msp.integrations import llmcompressor

    pins = (REPO_DIR / "scripts" / "llmcompressor-requirements.txt").read_text().split()
    assert "llmcompressor==0.14.0.1" in pins and "llmcompressor==0.14.0.1" in llmcompressor._INSTALL


def test_readme_blocks_split_by_the_marker():
    marked = LLMCOMPRESSOR_MARKER + " (make)\nimport llmcompressor\n"
    readme = "x\n```python\nimport msp\n```\n```python\n" + marked + "```\n"
    assert python_blocks(readme) == ["import msp\n"]
    assert python_blocks(readme, llmcompressor=True) == [LLMCOMPRESSOR_MARKER + " (make)\nimport llmcompressor\n"]
    real = (REPO_DIR / "README.md").read_text()
    assert len(python_blocks(real, llmcompressor=True)) == 1  # run by tests_llmcompressor/test_llmcompressor.py
    assert len(python_blocks(real)) + 1 == real.count("```python")
