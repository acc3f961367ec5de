"""Streaming synthesis (devices.ondevice.streaming): the streamed mel and waveform equal the whole
utterance's, the vocoder's context rule, and the real-time margin."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from devices.ondevice import corpus, frontend, streaming
from devices.ondevice.models import build_acoustic, build_vocoder, get_preset
from devices.ondevice.streaming import STREAM_TOLERANCE, VocoderStream, realtime_margin


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    return build_acoustic(cfg.acoustic, seed=0).eval(), build_vocoder(cfg.vocoder, seed=0).eval()


def _inputs(length_class: str, emotion: str = "happy"):
    sentence = next(s for s in corpus.default_corpus() if s.length_class == length_class)
    return frontend.text_to_ids(sentence.text, emotion=emotion).to_tensors()


@pytest.mark.parametrize("length_class", ["short", "long"])
def test_streamed_mel_and_audio_equal_the_whole_utterance(tiny, length_class):
    acoustic, vocoder = tiny
    inputs = _inputs(length_class)
    with torch.inference_mode():
        out = acoustic(**inputs)
        whole = vocoder(out.mel.transpose(1, 2)).reshape(-1)
        pieces = list(streaming.stream_mel(acoustic, inputs))
        mel = torch.cat(pieces, dim=1)
        assert len(pieces) > 1                       # handed over while decoding, not at the end
        assert mel.shape == out.mel.shape
        assert float((mel - out.mel).abs().max()) <= STREAM_TOLERANCE
        for chunk in (1, 7, 40, 10_000):
            chunks = list(streaming.stream(acoustic, vocoder, inputs, chunk))
            hop = vocoder.cfg.hop_length
            assert all(c.numel() == chunk * hop for c in chunks[:-1])
            assert 0 < chunks[-1].numel() <= chunk * hop
            wav = torch.cat(chunks)
            assert wav.shape == whole.shape
            assert float((wav - whole).abs().max()) <= STREAM_TOLERANCE, chunk


def test_forced_durations_stream_too(tiny):
    acoustic, vocoder = tiny
    inputs = _inputs("short")
    durations = torch.full_like(inputs["sy"], 4)
    with torch.inference_mode():
        whole = vocoder(acoustic(**inputs, durations=durations).mel.transpose(1, 2)).reshape(-1)
        wav = torch.cat(list(streaming.stream(acoustic, vocoder, inputs, 10, durations=durations)))
    assert wav.numel() == 4 * inputs["sy"].numel() * vocoder.cfg.hop_length
    assert float((wav - whole).abs().max()) <= STREAM_TOLERANCE


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_the_vocoder_context_covers_its_receptive_field(preset, causal):
    """A mel frame j changes only the samples of frames j - right .. j + left - 1 (``context_frames``, with
    its one frame of margin): so a chunk vocoded with that context equals the whole utterance."""
    cfg = dataclasses.replace(get_preset(preset).vocoder, causal=causal)
    vocoder = build_vocoder(cfg, seed=3).eval()
    left, right = vocoder.context_frames()
    assert left > 0 and (right == 0) == causal
    gen = torch.Generator().manual_seed(0)
    mel = torch.randn(1, cfg.in_channels, left + right + 12, generator=gen)
    j = right + 6
    bumped = mel.clone()
    bumped[:, :, j] += 3.0
    with torch.inference_mode():
        diff = (vocoder(bumped) - vocoder(mel)).abs().reshape(-1, cfg.hop_length).amax(dim=1)
    changed = torch.nonzero(diff > 0).reshape(-1).tolist()
    assert changed and min(changed) >= j - right and max(changed) <= j + left - 1, (changed, left, right)
    assert min(changed) == j if causal else min(changed) < j


def test_a_non_causal_vocoder_streams_with_its_overlap():
    """A non-causal HifiGan needs future frames: a chunk waits for ``right`` frames (the overlap) and then
    equals the whole utterance too."""
    cfg = dataclasses.replace(get_preset("tiny").vocoder, causal=False)
    vocoder = build_vocoder(cfg, seed=1).eval()
    left, right = vocoder.context_frames()
    mel = torch.randn(1, 50, cfg.in_channels, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        whole = vocoder(mel.transpose(1, 2)).reshape(-1)
        voc = VocoderStream(vocoder)
        voc.push(mel[:, :20])
        assert voc.ready() == 20 - right            # the overlap: the last ``right`` frames wait
        pieces = [voc.pull(voc.ready())]
        voc.push(mel[:, 20:])
        while voc.ready(final=True):
            pieces.append(voc.pull(min(7, voc.ready(final=True))))
        err = float((torch.cat(pieces) - whole).abs().max())
    assert err <= STREAM_TOLERANCE, err


def test_base_vocoder_streams_in_chunks():
    vocoder = build_vocoder(get_preset("base").vocoder, seed=0).eval()
    mel = torch.randn(1, 60, 80, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = vocoder(mel.transpose(1, 2)).reshape(-1)
        voc = VocoderStream(vocoder)
        voc.push(mel[:, :35])
        first = voc.pull(25)                      # only 35 frames arrived: the first 25 can go
        assert voc.ready() == 10
        voc.push(mel[:, 35:])
        rest = [voc.pull(min(25, voc.ready(final=True))) for _ in range(2)]
        assert voc.ready(final=True) == 0
        err = float((torch.cat([first, *rest]) - whole).abs().max())
    assert err <= STREAM_TOLERANCE, err


def test_realtime_margin():
    assert realtime_margin([0.5], [0.4]) is None
    # chunk 1 ready at 0.5 plays until 0.9; chunk 2 ready at 0.7 (0.2 s early), plays 0.9-1.3;
    # chunk 3 ready at 1.5: 0.2 s late (playback stalled)
    assert realtime_margin([0.5, 0.7, 1.5], [0.4, 0.4, 0.4]) == pytest.approx(-0.2)
    assert realtime_margin([0.1, 0.2, 0.3], [1.0, 1.0, 1.0]) == pytest.approx(0.9)


def test_bad_chunk_size(tiny):
    acoustic, vocoder = tiny
    with pytest.raises(ValueError, match="chunk_frames must be >= 1"):
        next(streaming.stream(acoustic, vocoder, _inputs("short"), 0))


@pytest.mark.slow
def test_the_agent_measures_streaming_synthesis_with_time_to_first_audio(tmp_path):
    """One real process on this machine in streaming mode: every sample has its first audio before its
    last, several chunks, and the same audio length a whole-utterance process measures; each process
    comes with its memory timeline and phase marks."""
    from pathlib import Path

    from devices.bundle import build_bundle
    from devices.inventory import local_device
    from devices.measure import measure_variant
    from devices.ondevice.protocol import Protocol
    from devices.transport import LocalTransport
    from variants.artifact import save_artifact

    cfg = get_preset("tiny")
    acoustic, vocoder = build_acoustic(cfg.acoustic, seed=0), build_vocoder(cfg.vocoder, seed=0)
    art = save_artifact(tmp_path / "art", acoustic, vocoder, cfg.to_dict(),
                        manifest_extra={"name": "original"}).path
    dev = local_device()
    bundle = build_bundle(tmp_path / "state")
    audio = {}
    for chunk in (20, None):
        protocol = Protocol(processes=1, warmup=0, min_iters=7, min_seconds=0.0, max_iters=7, threads=1,
                            timeout_s=300, sentences=("short",), stream_chunk_frames=chunk)
        record = measure_variant(LocalTransport(dev, tmp_path / "device"), dev, Path(art), "original",
                                 protocol, bundle=bundle)
        assert record["status"] == "ok", record["error"]
        assert record["protocol"]["stream_chunk_frames"] == chunk
        timeline = record["processes"][0]["memory_timeline"]
        marks = timeline["marks"]
        order = [marks[k] for k in ("import", "load", "first_inference", "warmup", "steady")]
        assert 0 < order[0] and order == sorted(order) and order[1] < order[2] < order[4]
        assert timeline["t_s"] == sorted(timeline["t_s"]) and len(timeline["t_s"]) >= 2
        assert max(timeline["rss_bytes"]) <= record["processes"][0]["peak_rss_bytes"]
        samples = record["processes"][0]["samples"]
        audio[chunk] = sorted((s["sentence_id"], s["emotion"], s["audio_s"]) for s in samples)
        for s in samples:
            if chunk is None:
                assert s["ttfa_s"] == s["total_s"] and s["chunks"] == 1 and s["rt_margin_s"] is None
            else:
                assert 0 < s["ttfa_s"] < s["total_s"]
                assert s["chunks"] == -(-s["frames"] // chunk) >= 2
                assert s["rt_margin_s"] is not None
                assert s["acoustic_s"] > 0 and s["vocoder_s"] > 0
    assert audio[20] == audio[None]
