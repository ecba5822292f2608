"""Sharing one tuned file's work between tunes that run at once: before a tune starts a problem
it claims it in ``<tuned>.claims.json`` under the tuned file's lock; a problem already in the
tuned file, or claimed by a run that is still alive, is skipped. A claim names its run as
``pid@host``; a claim of a dead process on this host is taken over."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from solidx.gradlib.problem import GemmProblem
from solidx.gradlib.safe_files import replace_atomic
from solidx.gradlib.schema import locked

logger = logging.getLogger("solidx.gradlib.tuner")


def _alive(holder: str) -> bool:
    pid, _, host = holder.partition("@")
    if host != os.uname().nodename or not pid.isdigit():
        return True  # another machine's run: it cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """The claims of one run on one tuned file; ``done()`` gives the keys of the problems the
    tuned file already holds for this device and build (read under the lock)."""

    def __init__(self, tuned_file: Path, done: Callable[[], set[tuple]]) -> None:
        self.tuned_file, self.done = tuned_file, done
        self.path = Path(f"{tuned_file}.claims.json")
        self.me = f"{os.getpid()}@{os.uname().nodename}"
        self.mine: set[str] = set()

    def _read(self) -> dict[str, str]:
        try:
            claims = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            logger.warning("%s is not a claims file: starting it afresh", self.path)
            return {}
        return claims if isinstance(claims, dict) else {}

    def _write(self, claims: dict[str, str]) -> None:
        if claims or self.path.exists():
            replace_atomic(self.path, json.dumps(claims, indent=0).encode())

    def take(self, problem: GemmProblem) -> str | None:
        """Claim ``problem`` for this run: None when it is ours now, else why it is skipped."""
        key = repr(problem.key())
        with locked(self.tuned_file):
            if problem.key() in self.done():
                return "tuned by another run meanwhile"
            claims = self._read()
            holder = claims.get(key)
            if holder and holder != self.me and _alive(holder):
                return f"being tuned by another run ({holder})"
            claims[key] = self.me
            self._write(claims)
        self.mine.add(key)
        return None

    def release(self, problems: list[GemmProblem] | None = None) -> None:
        """Drop this run's claims on ``problems`` (all of them by default)."""
        keys = {repr(p.key()) for p in problems} if problems is not None else set(self.mine)
        keys &= self.mine
        if not keys:
            return
        with locked(self.tuned_file):
            claims = self._read()
            for key in keys:
                if claims.get(key) == self.me:
                    del claims[key]
            self._write(claims)
        self.mine -= keys


__all__ = ["Claims"]
