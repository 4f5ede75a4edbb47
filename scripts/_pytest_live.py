"""pytest plugin for scripts/gpu_session.sh: append each test's outcome to $LIVE_REPORT the moment
it is known (a failure with its traceback), so a run cut off by its time limit still says what
failed and why. Works under pytest-xdist (reports reach the controlling process)."""

from __future__ import annotations

import os


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("LIVE_REPORT")
    if not path or (report.passed and report.when != "call") or report.skipped:
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the controller writes it (else each line twice)
        return
    with open(path, "a") as fh:
        if report.failed:
            fh.write(f"FAILED {report.nodeid} ({report.when}, {report.duration:.1f}s)\n"
                     f"{report.longreprtext[-4000:]}\n\n")
        else:
            fh.write(f"passed {report.nodeid} {report.duration:.1f}s\n")
