"""Integrations: an msp plan translated into another tool's own configuration.

Each tool has a module of its own, imported on demand; none of them imports its tool (or torch)
before one of its functions is called, so ``import msp`` works without any of these tools:

- ``msp.integrations.llmcompressor``: ``modifiers(plan, layers, pruner=...)``, the SparseGPT or Wanda
  modifiers of llm-compressor (PyPI ``llmcompressor``) that apply a plan exactly.

Every integration is tested against its tool's real package (``make test-integrations``).
"""
