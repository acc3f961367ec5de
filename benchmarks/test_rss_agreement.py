"""Does the agent's peak RSS agree with GNU time's?

The same worker command (tiny model, short sentences, one thread) run alternately under the agent's
supervisor (peak RSS = max of wait4's ru_maxrss and the polled VmHWM, read from outside the process) and
under ``/usr/bin/time -v`` ("Maximum resident set size"), interleaved A B A B ...; the ratio of the medians
goes to ``extra_info`` and is printed.

    pytest benchmarks/test_rss_agreement.py --benchmark-only -s
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys

import pytest

from devices.ondevice.agent import supervisor
from devices.ondevice.protocol import Protocol

ROUNDS = int(os.environ.get("EDGEBENCH_RSS_ROUNDS", "4"))
PROTOCOL = Protocol(processes=1, warmup=1, min_iters=7, min_seconds=0.5, max_iters=50, threads=1,
                    timeout_s=300, sentences=("short",))


@pytest.mark.skipif(not os.path.exists("/usr/bin/time"), reason="needs GNU time (apt-get install time)")
def test_peak_rss_agrees_with_gnu_time(benchmark, tiny_artifact):
    doc = json.dumps(PROTOCOL.to_document())
    argv = [sys.executable, "-m", "devices.ondevice.agent.worker", "--artifact", str(tiny_artifact),
            "--protocol", doc,
            "--deadline-s", "200"]
    env = dict(os.environ, PYTHONPATH=supervisor.bundle_root())
    agent, gnu = [], []

    def one_round():
        run = supervisor.run_worker(argv, 300)
        assert run["exit_code"] == 0, run["stderr"][-2000:]
        agent.append(max(v for v in (run["ru_maxrss_bytes"], run["memory"].vm_hwm) if v))
        out = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
        gnu.append(kb * 1024)

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    ratio = statistics.median(agent) / statistics.median(gnu)
    benchmark.extra_info.update(agent_mib=statistics.median(agent) / 2**20,
                                gnu_time_mib=statistics.median(gnu) / 2**20, ratio=ratio, n=ROUNDS)
    print(f"\npeak RSS: agent {statistics.median(agent) / 2**20:.1f} MiB, /usr/bin/time -v "
          f"{statistics.median(gnu) / 2**20:.1f} MiB, ratio {ratio:.4f} (n={ROUNDS} each, interleaved)")
    assert 0.9 < ratio < 1.1
