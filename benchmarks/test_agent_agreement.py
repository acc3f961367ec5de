"""Does the agent measure what an independent timing measures?

The agent's median steady-state acoustic latency for one sentence (fresh worker processes, the deployed
bundle, LocalTransport) against pytest-benchmark timing the same forward pass in this process: same
artifact, same sentence, the same seven emotions in the same proportions, same thread count. Because
this machine is shared and noisy, the two are interleaved in one run: an agent process before each
in-process block and one after the last (A-B-A-B-...-A). The ratio of the pooled medians (agent /
in-process) and the per-block ratios (each block against its neighbouring agent runs) go to
``extra_info`` and are printed.

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
from devices.ondevice.protocol import Protocol
from devices.push import ensure_artifact, ensure_bundle
from devices.record import parse_record
from devices.transport import LocalTransport

PRESET = os.environ.get("EDGEBENCH_AGREEMENT_PRESET", "tiny")
SENTENCE_ID = "short-01"
THREADS = 1
ROUNDS = 5                     # per emotion and agent process (a block: 35 samples)
BLOCKS = 4                     # in-process blocks, each between two agent processes
# A gross disagreement (timing the wrong span, a lost inference_mode, a thread-count mix-up) lands far
# outside this band; the noise of a shared machine does not.
RATIO_BAND = (0.5, 2.0)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
    from variants.artifact import save_artifact

    cfg = get_preset(PRESET)
    out = tmp_path_factory.mktemp("agreement") / PRESET
    acoustic, vocoder = build_acoustic(cfg.acoustic, seed=0), build_vocoder(cfg.vocoder, seed=0)
    save_artifact(out, acoustic, vocoder, cfg.to_dict(),
                  manifest_extra={"name": "original", "preset": PRESET, "seed": 0})
    return out


def agent_acoustic_samples(transport, bundle, artifact: Path, processes: int) -> list:
    from devices.ondevice.frontend import EMOTIONS

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
    from devices.ondevice.corpus import default_corpus
    from devices.ondevice.frontend import EMOTIONS, text_to_ids
    from variants.artifact import load_component

    transport = LocalTransport(local_device(), tmp_path / "device")
    bundle = build_bundle(tmp_path / "state")
    block = ROUNDS * len(EMOTIONS)
    agent_blocks = []

    text = next(s.text for s in default_corpus() if s.id == SENTENCE_ID)
    inputs = [text_to_ids(text, emotion=e).to_tensors() for e in EMOTIONS]
    feed = itertools.cycle(inputs)
    rounds = itertools.count()

    def setup():
        # Interleave: an agent process (35 samples) before every in-process block of 35 rounds. Setup
        # is not timed; the first round after an agent run pays for the cold cache (the median does not).
        if next(rounds) % block == 0:
            agent_blocks.append(agent_acoustic_samples(transport, bundle, artifact, 1))
        return (), next(feed)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        acoustic = load_component(artifact, "acoustic")
        with torch.inference_mode():
            for x in inputs * 2:         # first inference and warmup, as the agent does
                acoustic(**x)
            benchmark.pedantic(lambda **x: acoustic(**x), setup=setup, rounds=BLOCKS * block, iterations=1)
    finally:
        torch.set_num_threads(threads_before)
    agent_blocks.append(agent_acoustic_samples(transport, bundle, artifact, 1))   # A-B-A-...-B-A

    if benchmark.disabled:
        pytest.skip("pytest-benchmark is disabled: no in-process timing to compare with")
    in_process_data = list(benchmark.stats.stats.data)
    in_process = statistics.median(in_process_data)
    agent = [x for b in agent_blocks for x in b]
    agent_median = statistics.median(agent)
    ratio = agent_median / in_process
    # Paired by time: each in-process block against the agent runs just before and after it.
    paired = [statistics.median(agent_blocks[k] + agent_blocks[k + 1])
              / statistics.median(in_process_data[k * block:(k + 1) * block]) for k in range(BLOCKS)]
    benchmark.extra_info.update({
        "preset": PRESET, "sentence_id": SENTENCE_ID, "threads": THREADS,
        "agent_median_acoustic_s": agent_median, "agent_n": len(agent),
        "in_process_median_acoustic_s": in_process, "in_process_n": len(in_process_data),
        "ratio_agent_over_in_process": ratio, "paired_block_ratios": paired,
    })
    print(f"\nagent/in-process acoustic median ({PRESET}, {SENTENCE_ID}, {THREADS} thread): "
          f"{agent_median * 1e3:.2f} ms (n={len(agent)}) / {in_process * 1e3:.2f} ms "
          f"(n={len(in_process_data)}) = {ratio:.3f}; per block: {', '.join(f'{r:.3f}' for r in paired)}")
    assert RATIO_BAND[0] < ratio < RATIO_BAND[1]
