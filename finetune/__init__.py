"""Building a domain embedder: pseudonymize, translate, synthesize QA, filter, split, mine, train.

Importing this package sets the offline environment through `rag` (docs/design.md §8).
"""

import rag  # noqa: F401  (offline environment first)
