"""Does the agent measure what an independent timing measures?

The agent's median steady-state acoustic latency for one sentence (fresh worker processes, the deployed
bundle, LocalTransport) against pytest-benchmark timing the same forward pass in this process: same
artifact, same sentence, the same seven emotions in the same proportions, same thread count. The agent
runs before and after the in-process timing (A-B-A) and their samples are pooled, because this machine
is shared and noisy; the ratio agent / in-process is reported in ``extra_info`` and printed.

    pytest benchmarks/test_agent_agreement.py --benchmark-only -s

EDGEBENCH_AGREEMENT_PRESET=base selects a bigger model (default: tiny).
"""

from __future__ import annotations

import itertools
import os
import statistics
from pathlib import Path

import pytest
import torch

from devices.bundle import build_bundle
from devices.inventory import local_device
from devices.measure import agent_command
from devices.protocol import Protocol
from devices.push import ensure_artifact, ensure_bundle
from devices.record import parse_record
from devices.transport import LocalTransport

PRESET = os.environ.get("EDGEBENCH_AGREEMENT_PRESET", "tiny")
SENTENCE_ID = "short-01"
THREADS = 1
ROUNDS = 5                     # per emotion and agent process
AGENT_PROCESSES = (2, 1)       # before and after the in-process timing
# A gross disagreement (timing the wrong span, a lost inference_mode, a thread-count mix-up) lands far
# outside this band; the noise of a shared machine does not.
RATIO_BAND = (0.5, 2.0)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from variants.artifact import save_artifact
    from variants.models import build_acoustic, build_vocoder, get_preset

    cfg = get_preset(PRESET)
    out = tmp_path_factory.mktemp("agreement") / PRESET
    acoustic, vocoder = build_acoustic(cfg.acoustic, seed=0), build_vocoder(cfg.vocoder, seed=0)
    save_artifact(out, acoustic, vocoder, cfg.to_dict(),
                  manifest_extra={"name": "original", "preset": PRESET, "seed": 0})
    return out


def agent_acoustic_samples(transport, bundle, artifact: Path, processes: int) -> list:
    from variants.frontend import EMOTIONS

    n = ROUNDS * len(EMOTIONS)
    protocol = Protocol(processes=processes, warmup=2, min_iters=n, min_seconds=0.0, max_iters=n,
                        threads=THREADS, timeout_s=600, sentences=("short",))
    agent = ensure_bundle(transport, bundle)
    remote = ensure_artifact(transport, artifact).remote_path
    argv = agent_command(agent.agent_argv, remote, "original", protocol, transport.work_dir)
    result = transport.run([*argv, "--sentence-ids", SENTENCE_ID], timeout=protocol.transport_timeout())
    record = parse_record(result.stdout, protocol=protocol)
    assert record["status"] == "ok", record["error"]
    samples = [s for p in record["processes"] for s in p["samples"]]
    assert {s["sentence_id"] for s in samples} == {SENTENCE_ID}
    assert len(samples) == processes * n
    return [s["acoustic_s"] for s in samples]


def test_agent_agrees_with_in_process_timing(benchmark, artifact, tmp_path):
    from variants.artifact import load_component
    from variants.corpus import default_corpus
    from variants.frontend import EMOTIONS, text_to_ids

    transport = LocalTransport(local_device(), tmp_path / "device")
    bundle = build_bundle(tmp_path / "state")
    agent = agent_acoustic_samples(transport, bundle, artifact, AGENT_PROCESSES[0])

    text = next(s.text for s in default_corpus() if s.id == SENTENCE_ID)
    inputs = [text_to_ids(text, emotion=e).to_tensors() for e in EMOTIONS]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        acoustic = load_component(artifact, "acoustic")
        feed = itertools.cycle(inputs)
        with torch.inference_mode():
            for x in inputs * 2:         # first inference and warmup, as the agent does
                acoustic(**x)
            benchmark.pedantic(lambda **x: acoustic(**x), setup=lambda: ((), next(feed)),
                               rounds=ROUNDS * len(EMOTIONS) * 2, iterations=1)
    finally:
        torch.set_num_threads(threads_before)

    agent += agent_acoustic_samples(transport, bundle, artifact, AGENT_PROCESSES[1])
    if benchmark.disabled:
        pytest.skip("pytest-benchmark is disabled: no in-process timing to compare with")
    in_process = benchmark.stats.stats.median
    agent_median = statistics.median(agent)
    ratio = agent_median / in_process
    benchmark.extra_info.update({
        "preset": PRESET, "sentence_id": SENTENCE_ID, "threads": THREADS,
        "agent_median_acoustic_s": agent_median, "agent_n": len(agent),
        "in_process_median_acoustic_s": in_process, "in_process_n": benchmark.stats.stats.rounds,
        "ratio_agent_over_in_process": ratio,
    })
    print(f"\nagent/in-process acoustic median ({PRESET}, {SENTENCE_ID}, {THREADS} thread): "
          f"{agent_median * 1e3:.2f} ms (n={len(agent)}) / {in_process * 1e3:.2f} ms "
          f"(n={benchmark.stats.stats.rounds}) = {ratio:.3f}")
    assert RATIO_BAND[0] < ratio < RATIO_BAND[1]
