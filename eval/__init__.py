"""Metrics and evaluation harnesses: eval.ir, eval.ragas_suite, eval.deid.

Importing this package sets the offline environment through `rag` (docs/design.md §8).
"""

import rag  # noqa: F401  (offline environment first)
