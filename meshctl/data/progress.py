"""prepare's progress on stderr (stdout stays clean for --format json): documents/s, tokens/s, and an ETA
from the bytes of the source files read against their total (none for hf: streams, whose size is unknown)."""

from __future__ import annotations

from typing import Any


class PrepareProgress:
    """`phase(description, total_bytes)` starts a line; `advance(bytes_read, docs, tokens)` moves it.

    Shown only when asked (prepare asks when stderr is a terminal); otherwise every call does nothing.
    """

    def __init__(self, show: bool) -> None:
        self._bar: Any = None
        self._task: Any = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=20), DownloadColumn(), _rates(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )

    def phase(self, description: str, total_bytes: int | None) -> None:
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(description, total=total_bytes, docs=0, tokens=0)
            self._docs = self._tokens = 0

    def advance(self, bytes_read: int, docs: int, tokens: int = 0) -> None:
        if self._task is not None:
            self._docs += docs
            self._tokens += tokens
            self._bar.update(self._task, completed=bytes_read, docs=self._docs, tokens=self._tokens)

    def __enter__(self) -> PrepareProgress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _rates():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rates(ProgressColumn):
        def render(self, task) -> Text:
            elapsed = task.elapsed or 0.0
            if not elapsed:
                return Text("")
            docs, tokens = task.fields.get("docs", 0), task.fields.get("tokens", 0)
            text = f"{docs / elapsed:,.0f} docs/s"
            if tokens:
                text += f" {tokens / elapsed / 1e3:,.0f}k tokens/s"
            return Text(text)

    return Rates()
