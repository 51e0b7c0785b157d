"""The one progress reporter of the package: bars for long loops and timed stages for pipelines.

Everything goes to stderr and nothing is printed when reporting is disabled. A bar is a tqdm bar
when tqdm is importable, else one line that rewrites itself (``msp search: 3/21 generations,
evaluations 24, best fitness 1.5``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator


class Progress:
    """Progress of one long loop over ``total`` units (None when unknown).

    Args:
        desc: what runs, e.g. ``"msp search"``.
        total: the number of units, or None.
        unit: the plural name of a unit, e.g. ``"generations"`` or ``"batches"``.
        enabled: False makes every method a no-op.
    """

    def __init__(self, desc: str, total: int | None, unit: str, enabled: bool) -> None:
        self._desc, self._total, self._unit = desc, total, unit
        self._done = 0
        self._bar = None
        self._line = False
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._line = True
            return
        self._bar = tqdm(total=total, desc=desc, unit=unit, leave=True, dynamic_ncols=True)

    def advance(self, count: int = 1, info: dict[str, Any] | None = None) -> None:
        """Count ``count`` more units done; ``info`` (e.g. ``{"best fitness": 1.5}``) is shown after them."""
        self.reach(self._done + count, info)

    def reach(self, done: int, info: dict[str, Any] | None = None) -> None:
        """Show ``done`` units done (capped at ``total``; never moves back) and ``info``."""
        if self._total is not None:
            done = min(done, self._total)
        done = max(done, self._done)
        step, self._done = done - self._done, done
        if self._bar is not None:
            if info:
                self._bar.set_postfix(ordered_dict=info, refresh=False)
            self._bar.update(step)  # refreshes, throttled
        elif self._line:
            of = "" if self._total is None else f"/{self._total}"
            details = "".join(f", {key} {value}" for key, value in (info or {}).items())
            sys.stderr.write(f"\r{self._desc}: {done}{of} {self._unit}{details}   ")
            sys.stderr.flush()

    def close(self) -> None:
        """End the bar (or the line). Idempotent."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._line:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._line = False


class Stage:
    """The steps of one long job, reported on stderr: ``msp <job>: <what> ...`` when a step starts
    and ``msp <job>: <what>: done in 1.2 s`` when it ends.

    Args:
        job: the job's name, e.g. ``"prune"``.
        enabled: False reports nothing.
    """

    def __init__(self, job: str, enabled: bool) -> None:
        self.job, self.enabled = job, enabled

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        """``with stage("Fisher traces"): ...`` reports the step around the block."""
        start = time.perf_counter()
        self.note(f"{what} ...")
        yield
        self.note(f"{what}: done in {time.perf_counter() - start:.1f} s")

    def note(self, text: str) -> None:
        """One line ``msp <job>: <text>``."""
        if self.enabled:
            print(f"msp {self.job}: {text}", file=sys.stderr, flush=True)
