"""Text -> tokens -> GPT-NeoX indexed dataset (.bin/.idx) -> training windows.

`TokenWindows` imports torch, so it is loaded on first use rather than with this package.
"""

from __future__ import annotations

from typing import Any

from meshctl.data.indexed import IndexedDataset, IndexedDatasetWriter

__all__ = ["IndexedDataset", "IndexedDatasetWriter", "TokenWindows"]


def __getattr__(name: str) -> Any:
    if name == "TokenWindows":
        from meshctl.data.windows import TokenWindows

        return TokenWindows
    raise AttributeError(name)
