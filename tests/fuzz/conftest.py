"""Hypothesis profiles for the fuzz tests: reproducible in CI, random on a developer's machine.

Under ``CI`` the ``ci`` profile is loaded: derandomized (the same examples on
every run, so a red CI is a real regression and reruns the same inputs) and
without the example database. Elsewhere hypothesis explores new examples on
every run and remembers failing ones in ``.hypothesis/``;
``HYPOTHESIS_PROFILE=ci`` reproduces CI's run locally. Each test sets its own
``max_examples``; a failure prints the blob that ``@reproduce_failure`` replays.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

from tests.timing import scaled

# The fuzz tests share one live server across examples on purpose (a real
# sidecar and emulator per test, as every test here has), which hypothesis
# flags for function-scoped fixtures. An example may wait for the pool to
# settle, which can take a second on a busy machine: bound it, generously.
_BASE = settings(
    suppress_health_check=(HealthCheck.function_scoped_fixture, HealthCheck.too_slow),
    deadline=timedelta(seconds=scaled(10)),
    print_blob=True,
)

settings.register_profile("ci", _BASE, derandomize=True, database=None)
settings.register_profile("dev", _BASE)
_DEFAULT = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or _DEFAULT)
