"""Run a command with its CPU throughput capped: ``python3 cpucap.py DUTY PERIOD_S COMMAND...``.

The command runs in its own process group, which is let run for DUTY x PERIOD_S and stopped (SIGSTOP)
for the rest of each period, the way a CPU quota or a cycling thermal throttle caps a board: everything
it starts (the agent's workers) gets DUTY of the time. Standard library only; used as a device's
``python`` (through a small shell wrapper) by tests/test_drift_e2e.py. A SIGTERM to this process is passed
on; the group is always left running when this process ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def main(argv: list) -> int:
    duty, period, cmd = float(argv[0]), float(argv[1]), argv[2:]
    proc = subprocess.Popen(cmd, preexec_fn=os.setpgrp)  # noqa: PLW1509 - a group of its own to stop

    def group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def forward(signum, _frame) -> None:
        group(signal.SIGCONT)
        group(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while proc.poll() is None:
            time.sleep(duty * period)
            group(signal.SIGSTOP)
            time.sleep((1 - duty) * period)
            group(signal.SIGCONT)
    finally:
        group(signal.SIGCONT)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
