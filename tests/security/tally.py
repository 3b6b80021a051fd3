"""The security suite's count of hostile requests and 5xx answers, kept in a module of its own.

Whichever process runs the attacks counts them (a pytest-xdist worker hands its count to the
controller at the end, see ``tests/conftest.py``); the process that reports prints one line and
writes ``tests/artifacts/security-tally.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from imgsvc.config import PROJECT_ROOT

TALLY_FILE = PROJECT_ROOT / "tests" / "artifacts" / "security-tally.json"


@dataclass
class Tally:
    """Hostile requests sent and 5xx answers seen, across the whole run."""

    hostile: int = 0
    statuses: Counter = field(default_factory=Counter)
    expected_503: int = 0
    unexpected_5xx: list[str] = field(default_factory=list)

    def record(self, what: str, status: int, *, hostile: bool, expect_503: bool = False) -> None:
        self.hostile += hostile
        self.statuses[status] += 1
        if status >= 500:
            if expect_503 and status == 503:
                self.expected_503 += 1
            else:
                self.unexpected_5xx.append(f"{what} -> {status}")

    def merge(self, part: dict[str, object]) -> None:
        """Add another process's tally (its :meth:`summary`) to this one."""
        self.hostile += int(part["hostile_requests"])
        self.statuses.update({int(status): n for status, n in dict(part["statuses"]).items()})
        self.expected_503 += int(part["expected_503"])
        self.unexpected_5xx += list(part["unexpected_5xx"])

    def summary(self) -> dict[str, object]:
        return {
            "hostile_requests": self.hostile,
            "requests": sum(self.statuses.values()),
            "statuses": dict(sorted(self.statuses.items())),
            "expected_503": self.expected_503,
            "unexpected_5xx": self.unexpected_5xx,
        }

    def report(self) -> str | None:
        """Write the file and return the line to print; None when no attack ran in this session."""
        if not self.statuses:
            return None
        summary = self.summary()
        TALLY_FILE.parent.mkdir(parents=True, exist_ok=True)
        TALLY_FILE.write_text(json.dumps(summary, indent=2) + "\n")
        return (
            f"security suite: {summary['hostile_requests']} hostile requests, "
            f"{len(self.unexpected_5xx)} unexpected 5xx, {self.expected_503} expected 503 "
            f"(infrastructure faults); details in {TALLY_FILE.relative_to(PROJECT_ROOT)}"
        )


TALLY = Tally()
