"""Programs the tests need beside Python (Chromium, redis-server): ``make system-deps``
installs them; the tests only look.  Without one its tests skip, except under CI,
where a missing program is a broken set-up and fails the run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["UNDER_CI", "unavailable"]

# CI runs set CI=true, and so does .ci/run.
UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip what needs the missing program (a test, or a whole module at import);
    under CI, fail it instead."""
    if UNDER_CI:
        pytest.fail(f"{reason} (CI is set: a missing program fails the run, it does not skip)",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)
