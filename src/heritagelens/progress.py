"""What a slow step is doing, for whoever watches it: a line naming the model, the photos and how many (`say`), and a
bar over the photos (`bar`). Both go through the `heritagelens` logger: the command line shows them on stderr
(`show`); a notebook sees nothing unless it configures logging (`logging.basicConfig(level=logging.INFO)`)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("heritagelens")


class _Lines(logging.StreamHandler):
    """The command line's handler: `heritagelens: <what>` on stderr; `bars` says whether bars are drawn too."""

    def __init__(self, bars: bool):
        super().__init__(sys.stderr)
        self.bars = bars
        self.setFormatter(logging.Formatter("heritagelens: %(message)s"))


def show(bars: bool = True) -> None:
    """Lines on stderr from here on, and bars unless `bars` is False (`--quiet`)."""
    for h in [h for h in log.handlers if isinstance(h, _Lines)]:
        log.removeHandler(h)
    log.addHandler(_Lines(bars))
    log.setLevel(logging.INFO)
    log.propagate = False


def say(message: str) -> None:
    """One line of what is being done."""
    log.info(message)


def bar(total: int, what: str | None, unit: str = "photo"):
    """A bar over `total` items called `what` (None: no bar), drawn only where the command line shows lines and
    bars, on a terminal."""
    on = what is not None and log.isEnabledFor(logging.INFO)
    on = on and any(isinstance(h, _Lines) and h.bars for h in log.handlers)
    from tqdm import tqdm  # here: `--help` and `predict` start without it; a terminal bar (the CLI draws it)

    off = None if on else True  # None: tqdm's own test, drawn on a terminal only (never into a pipe or a log file)
    return tqdm(total=total, desc=what, unit=unit, disable=off, leave=False, dynamic_ncols=True, file=sys.stderr)
