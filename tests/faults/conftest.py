"""The ``faults`` marker (``--strict-markers`` is on) and the suite's scale.

``FAULT_SCALE`` multiplies the suite's counts (provider-fault turns, fuzzed frames,
schemathesis examples). Unset, it is 1 (the issue's figures: 1,000 turns, 10,000 frames)
when the run selects the marker (``pytest -m faults``), and 0.2 inside the whole suite,
which must stay quick. The same marker line belongs in ``pyproject.toml``; registering
it here too is harmless.
"""

from __future__ import annotations

import os

import pytest

from . import support

WHOLE_SUITE_SCALE = 0.2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault and hostile-input suite (issue 8)")
    if not os.environ.get("FAULT_SCALE"):
        expression = str(config.getoption("markexpr", "") or "")
        alone = "faults" in expression and "not faults" not in expression
        support.SCALE = 1.0 if alone else WHOLE_SUITE_SCALE
