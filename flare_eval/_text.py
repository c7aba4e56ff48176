"""Small text helpers shared by the messages and progress bars of several modules."""

from __future__ import annotations

import sys

__all__ = ["preview", "progress_bar"]


def preview(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, with `` ...`` when there are more.

    Examples
    --------
    >>> preview(["a", "b", "c"], limit=2)
    'a, b ...'
    """
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


class _HiddenBar:
    """What a progress bar that is not shown does: nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, *, desc: str, unit: str, show: bool | None):
    """A tqdm bar of ``total`` steps on stderr, or, when it is not shown, one that does nothing.

    ``show`` None shows it when stderr is a terminal (tqdm's own rule). tqdm is
    imported only for a bar that is shown: its import is a tenth of a small
    command's start-up.
    """
    if not (sys.stderr.isatty() if show is None else show):
        return _HiddenBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
