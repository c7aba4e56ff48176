"""Small text helpers shared by the messages of several modules."""

from __future__ import annotations

__all__ = ["preview"]


def preview(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, with `` ...`` when there are more.

    Examples
    --------
    >>> preview(["a", "b", "c"], limit=2)
    'a, b ...'
    """
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")
