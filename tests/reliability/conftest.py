"""The fault suite's plumbing: the `--long` switch, the seed, and the `figures` fixture that
records each case's figure and bound for `summary.py`.

    def test_something(figures: Figures) -> None:
        lost = ...
        figures.hold("SMTP 451 on RCPT: lost", lost, bound="0", holds=lost == 0)

`hold` writes one JSON line (case, figure, bound, holds, note, test) to the report file, then
fails the test if the figure is out of its bound: a row is written whether it holds or not,
so the summary shows what was measured. The report file is $POSTROOM_RELIABILITY_REPORT, or
reliability.jsonl beside pytest's temporary folders.

Long variants (more kills, longer loads) carry the `long` marker and are deselected unless
`--long` is given (or POSTROOM_RELIABILITY_LONG=1, for a run from the repository root where
this folder's options are not known yet, or `-m` names `long`).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "POSTROOM_RELIABILITY_REPORT"
LONG_ENV = "POSTROOM_RELIABILITY_LONG"
SEED_ENV = "POSTROOM_RELIABILITY_SEED"
DEFAULT_SEED = 20260101


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability", "postroom's fault suite (tests/reliability)")
    group.addoption("--long", action="store_true", default=False,
                    help="also run the long variants of tests/reliability (marker `long`)")
    group.addoption("--seed", type=int, default=None,
                    help=f"seed of the random kill moments (default ${SEED_ENV} or "
                         f"{DEFAULT_SEED})")


def long_enabled(config: pytest.Config) -> bool:
    """Whether the long variants run: --long, $POSTROOM_RELIABILITY_LONG, or -m naming them."""
    marker_expression = config.getoption("markexpr", "") or ""
    return (bool(config.getoption("--long", False)) or os.environ.get(LONG_ENV) == "1"
            or ("long" in marker_expression and "not long" not in marker_expression))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_enabled(config):
        return
    dropped = [item for item in items if item.get_closest_marker("long")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("long")]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under summary.py (the report file is named), record every failure of a test here,
    so a test that failed before measuring anything still shows as a failed row."""
    given = os.environ.get(REPORT_ENV)
    if not given or not report.nodeid.startswith("tests/reliability/"):
        return
    if report.failed or (report.when == "call" and report.passed):
        message = report.longreprtext.strip().splitlines()[-1:] if report.failed else []
        row = {"kind": "outcome", "test": report.nodeid, "when": report.when,
               "outcome": report.outcome, "seconds": round(report.duration, 2),
               "message": message[0][:300] if message else ""}
        with Path(given).open("a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    """The seed of every random choice in the suite (printed: a failure can be replayed)."""
    given = request.config.getoption("--seed", None)
    value = int(given if given is not None else os.environ.get(SEED_ENV, DEFAULT_SEED))
    print(f"\nreliability seed: {value} (replay with --seed {value})")
    return value


@pytest.fixture
def rng(seed: int, request: pytest.FixtureRequest) -> random.Random:
    """A random.Random per test, from the seed and the test's id: deterministic per test,
    whatever else runs."""
    return random.Random(f"{seed}:{request.node.nodeid}")


@dataclass
class Figures:
    """Records a test's figures into the report file (one JSON object a line)."""

    report: Path
    test: str
    seed: int
    broken: list[str] = field(default_factory=list)

    def hold(self, case: str, figure: Any, bound: str, holds: bool, note: str = "") -> None:
        """Record (case, figure, bound, holds); then fail the test unless it holds."""
        self.record(case, figure, bound, holds, note)
        self.assert_held()

    def record(self, case: str, figure: Any, bound: str, holds: bool, note: str = "") -> bool:
        """Record a row without failing yet (a test measuring several cases records them
        all, then calls assert_held); return whether it holds."""
        self._write(case, str(figure), bound, bool(holds), note)
        if not holds:
            self.broken.append(f"{case}: {figure} is out of its bound {bound}. {note}".strip())
        return bool(holds)

    def assert_held(self) -> None:
        """Fail the test if any row recorded so far is out of its bound."""
        assert not self.broken, "\n".join(self.broken)

    def skip(self, case: str, note: str) -> None:
        """Record a row that could not be measured here, with why; the test is skipped."""
        self._write(case, "-", "-", None, note)
        pytest.skip(f"{case}: {note}")

    def _write(self, case: str, figure: str, bound: str, holds: bool | None,
               note: str) -> None:
        row = {"kind": "figure", "case": case, "figure": figure, "bound": bound,
               "holds": holds, "note": note, "test": self.test, "seed": self.seed}
        with self.report.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(REPORT_ENV)
    path = Path(given) if given else tmp_path_factory.getbasetemp() / "reliability.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def figures(report_file: Path, seed: int, request: pytest.FixtureRequest) -> Figures:
    return Figures(report_file, request.node.nodeid, seed)
