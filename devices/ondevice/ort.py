"""The onnxruntime runtime of the reference Sambert-HifiGan: ONNX graphs + the autoregressive loops in numpy.

``variants.onnx_export`` writes the graphs (see its docstring for their inputs and outputs); this module
runs them on the device: the text graph, the duration predictor one phone at a time (``duration_step``,
LSTM state carried here), the frame indices of the length regulator (numpy), the decoder memory
(``memory``), the PNCA decoder one step at a time on its band (``decoder_step``; the self-attention
cache is a preallocated numpy array per layer, the memory window is sliced from the projected memory),
the post-net and the vocoder. Durations, band and the errors for 0 or too many frames are computed as
``Sambert.prepare`` computes them, so the results match torch within float rounding
(``TORCH_AGREEMENT_FP32``).

Runs on the device: standard library, numpy and onnxruntime only (never torch), Python 3.8+.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort

from devices.ondevice.artifact import read_config
from devices.ondevice.errors import ArtifactError

GRAPHS = ("text", "duration_step", "memory", "decoder_step", "postnet", "vocoder")
ACOUSTIC_GRAPHS = GRAPHS[:-1]
VOCODER_GRAPHS = ("vocoder",)
STREAMS = ("sy", "tone", "syllable_flag", "word_segment", "emotion", "speaker")
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

#: How far onnxruntime fp32 may be from torch fp32 on the same weights (``variants.onnx_export.agreement``:
#: ORT with torch's durations forced; mel: max over sentences of rms(diff)/rms(torch) and max |diff|;
#: wav: max |diff| of each runtime's vocoder on the torch mel). Measured with onnxruntime 1.31.1, torch 2.13
#: CPU (x86-64), the 15 corpus sentences x 2 emotions, 1 thread; ORT-predicted durations equal torch's in all:
#:   tiny    mel_rel_rms 3.2e-7  mel_max_abs 1.1e-6  wav_max_abs 3.7e-8  (optimized config: the same)
#:   base    mel_rel_rms 6.3e-7  mel_max_abs 1.8e-6  wav_max_abs 3.0e-8
#:   kantts-small fixture voice  3.6e-7 / 1.0e-6 / 4.9e-7
#: The bounds leave a margin of 15x or more (other CPUs and thread counts reorder float sums).
TORCH_AGREEMENT_FP32 = {"mel_rel_rms": 1e-5, "mel_max_abs": 5e-5, "wav_max_abs": 1e-5}


class AcousticResult(NamedTuple):
    """What ``OrtAcoustic`` returns (the fields of ``AcousticOutput`` a runner uses): ``mel`` float32
    [1, frames, 80] (after the post-net, cut to the real frames), ``durations`` int64 [1, T] (frames per
    phone), ``frames`` (the number of mel frames)."""

    mel: np.ndarray
    durations: np.ndarray
    frames: int


def versions() -> Dict[str, Any]:
    return {
        "onnxruntime": str(ort.__version__),
        "numpy": str(np.__version__),
        "providers": list(ort.get_available_providers()),
    }


def session_options(threads: Optional[int] = None, graph_optimization: str = "all") -> ort.SessionOptions:
    """One session's options: ``threads`` intra-op threads (None or 0: onnxruntime's default), one
    inter-op thread, sequential execution, the named graph optimization level."""
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise ValueError(
            f"graph_optimization {graph_optimization!r} is not one of {', '.join(GRAPH_OPTIMIZATION)}"
        )
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 0):
        raise ValueError(f"threads must be an integer >= 0 (0: onnxruntime's default), got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = GRAPH_OPTIMIZATION[graph_optimization]
    return options


def _section(meta: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = meta.get(key) if isinstance(meta, Mapping) else None
    if not isinstance(section, Mapping):
        raise ArtifactError(f"onnx metadata: no '{key}' section (export the model with this edgebench)")
    return section


class _Graphs:
    """The sessions of some graphs, with shared options."""

    def __init__(
        self,
        names: Sequence[str],
        graphs: Mapping[str, Union[bytes, str, os.PathLike[str]]],
        threads: Optional[int],
        graph_optimization: str,
        providers: Optional[Sequence[str]],
    ) -> None:
        options = session_options(threads, graph_optimization)
        self.providers = list(providers) if providers else list(DEFAULT_PROVIDERS)
        self.sessions: Dict[str, ort.InferenceSession] = {}
        for name in names:
            if name not in graphs:
                raise ArtifactError(f"onnx graphs: '{name}' missing")
            graph = graphs[name]
            source = bytes(graph) if isinstance(graph, (bytes, bytearray, memoryview)) else os.fspath(graph)
            try:
                session = ort.InferenceSession(source, sess_options=options, providers=self.providers)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                text = " ".join(str(exc).split())[:300]
                raise ArtifactError(f"onnx graph '{name}': onnxruntime cannot load it ({text})") from None
            self.sessions[name] = session
        if self.sessions:  # what onnxruntime really uses (it may drop a provider it cannot initialise)
            self.providers = list(next(iter(self.sessions.values())).get_providers())


class OrtAcoustic:
    """Sambert on onnxruntime: ``(sy, tone, syllable_flag, word_segment, emotion, speaker, durations=None)``
    -> AcousticResult, like ``Sambert.forward`` (batch size 1)."""

    def __init__(
        self,
        graphs: Mapping[str, Union[bytes, str, os.PathLike[str]]],
        meta: Mapping[str, Any],
        threads: Optional[int] = None,
        graph_optimization: str = "all",
        providers: Optional[Sequence[str]] = None,
    ) -> None:
        dims = _section(meta, "acoustic")
        try:
            self.r = int(dims["r"])
            self.n_mels = int(dims["n_mels"])
            self.max_len = int(dims["max_len"])
            self.max_frames = int(dims["max_frames"])
            self.vocab = {k: int(v) for k, v in dims["vocab"].items()}
            self.dur_layers = int(dims["dur_lstm_layers"])
            self.dur_hidden = int(dims["dur_lstm_hidden"])
            self.dec_heads = [int(h) for h in dims["dec_heads"]]
            self.dec_d_head = [int(d) for d in dims["dec_d_head"]]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"onnx metadata: acoustic: missing or bad {exc}") from None
        self.n_layers = len(self.dec_heads)
        loaded = _Graphs(ACOUSTIC_GRAPHS, graphs, threads, graph_optimization, providers)
        self.providers = loaded.providers
        s = loaded.sessions
        self._text, self._duration, self._memory = s["text"], s["duration_step"], s["memory"]
        self._step, self._postnet = s["decoder_step"], s["postnet"]
        self._step_outputs = ["y"] + [f"{kv}_{i}" for i in range(self.n_layers) for kv in ("k", "v")]

    # ------------------------------------------------------------------------------------ pieces

    def _ids(self, sy, tone, syllable_flag, word_segment, emotion, speaker) -> Dict[str, np.ndarray]:
        raw = dict(zip(STREAMS, (sy, tone, syllable_flag, word_segment, emotion, speaker)))
        ids = {k: np.ascontiguousarray(np.asarray(v), dtype=np.int64) for k, v in raw.items()}
        shape = ids["sy"].shape
        if len(shape) != 2 or shape[0] != 1 or shape[1] < 1:
            raise ValueError(f"OrtAcoustic: expected ids of shape [1, phones>=1], got {tuple(shape)}")
        for name, value in ids.items():
            if value.shape != shape:
                raise ValueError(f"OrtAcoustic: {name} shape {tuple(value.shape)} != sy shape {tuple(shape)}")
            if value.min() < 0 or value.max() >= self.vocab[name]:
                raise ValueError(f"OrtAcoustic: {name} ids outside the table (0..{self.vocab[name] - 1})")
        if shape[1] > self.max_len:
            raise ValueError(
                f"Sambert: {shape[1]} phones, more than the model's position table ({self.max_len}, "
                "max_len); split the text"
            )
        return ids

    def _predict(self, dur_cond: np.ndarray) -> np.ndarray:
        """DurationPredictor.infer: [1,T,D] -> log(1+frames) [1,T] float32."""
        x = np.zeros((1, 1, 1), np.float32)
        h = np.zeros((self.dur_layers, 1, self.dur_hidden), np.float32)
        c = np.zeros_like(h)
        n = dur_cond.shape[1]
        out = np.empty((1, n), np.float32)
        for i in range(n):
            x, h, c = self._duration.run(None, {"x": x, "cond": dur_cond[:, i : i + 1], "h": h, "c": c})
            out[0, i] = x[0, 0, 0]
        return out

    def durations(self, sy, tone, syllable_flag, word_segment, emotion, speaker) -> np.ndarray:
        """The predicted frames per phone, int64 [1, T] (the text graph and the duration loop only)."""
        ids = self._ids(sy, tone, syllable_flag, word_segment, emotion, speaker)
        dur_cond = self._text.run(["dur_cond"], ids)[0]
        return self._round(self._predict(dur_cond))[0]

    @staticmethod
    def _round(log_durations: np.ndarray) -> Tuple[np.ndarray, float]:
        frames_float = np.exp(log_durations) - np.float32(1.0)
        durations = np.floor(frames_float + np.float32(0.5)).astype(np.int64)  # [8]: no clamp
        return durations, float(frames_float.max())  # [15]: the band from the unrounded prediction

    def _forced(self, durations: Any, shape: Tuple[int, ...]) -> np.ndarray:
        forced = np.asarray(durations)
        if tuple(forced.shape) != tuple(shape):
            raise ValueError(f"Sambert: durations shape {tuple(forced.shape)} != ids shape {tuple(shape)}")
        kind = forced.dtype.kind
        if not (kind in "iu" or (kind == "f" and np.all(forced == np.floor(forced)))):
            raise ValueError(f"Sambert: durations must be integers, got {forced.dtype}")
        forced = forced.astype(np.int64)
        if bool((forced < 0).any()):
            raise ValueError("Sambert: forced durations must be >= 0")
        return forced

    # ------------------------------------------------------------------------------------ forward

    def __call__(
        self, sy, tone, syllable_flag, word_segment, emotion, speaker, durations=None
    ) -> AcousticResult:
        ids = self._ids(sy, tone, syllable_flag, word_segment, emotion, speaker)
        text, spk, emo, dur_cond = self._text.run(None, ids)
        n_phones = ids["sy"].shape[1]
        if durations is None:
            durations, longest = self._round(self._predict(dur_cond))
        else:
            durations = self._forced(durations, ids["sy"].shape)
            longest = float(durations.max())
        total = int(durations.sum())
        if total < 1:
            raise ValueError("Sambert: every phone got 0 frames; nothing to decode")
        if total > self.max_frames:
            raise ValueError(
                f"Sambert: {total} frames, more than max_frames={self.max_frames}; split the text"
            )
        r = self.r
        band = int(longest / r + 0.5)
        steps = (total + r - 1) // r
        padded = steps * r

        # length regulator indices (Sambert.length_regulate / duration_positions)
        ends = np.cumsum(durations[0])
        frame = np.arange(padded, dtype=np.int64)
        index = np.searchsorted(ends, frame, side="right")
        valid = index < n_phones
        index = np.minimum(index, n_phones - 1)
        starts = ends - durations[0]
        positions = (frame - starts[index] + 1) * valid
        mem = self._memory.run(
            None,
            {
                "text": text,
                "spk": spk,
                "emo": emo,
                "index": index.reshape(1, padded).astype(np.int64),
                "valid": valid.reshape(1, padded).astype(np.float32),
                "positions": positions.reshape(1, padded).astype(np.float32),
            },
        )
        memory = mem[0]
        mem_kv = mem[1:]

        # the banded decoder loop (PncaDecoder._infer_banded)
        caches = [
            np.zeros((1, h, steps, dh), np.float32)
            for h, dh in zip(self.dec_heads, self.dec_d_head)
            for _ in (0, 1)
        ]
        ys = np.empty((1, steps, r * self.n_mels), np.float32)
        frame_in = np.zeros((1, 1, self.n_mels), np.float32)
        feed: Dict[str, np.ndarray] = {}
        for t in range(steps):
            lo, hi = max(0, t - band), min(steps, t + band + 1)
            feed["frame"] = frame_in
            feed["memory_step"] = memory[:, t : t + 1]
            for i in range(self.n_layers):
                feed[f"past_k_{i}"] = np.ascontiguousarray(caches[2 * i][:, :, lo:t])
                feed[f"past_v_{i}"] = np.ascontiguousarray(caches[2 * i + 1][:, :, lo:t])
                feed[f"mem_k_{i}"] = np.ascontiguousarray(mem_kv[2 * i][:, :, t:hi])
                feed[f"mem_v_{i}"] = np.ascontiguousarray(mem_kv[2 * i + 1][:, :, t:hi])
            out = self._step.run(self._step_outputs, feed)
            y = out[0]
            for j, kv in enumerate(out[1:]):
                caches[j][:, :, t] = kv[:, :, 0]
            ys[:, t] = y[:, 0]
            frame_in = np.ascontiguousarray(y[:, :, -self.n_mels :])

        keep = (np.arange(padded) < total).astype(np.float32).reshape(1, padded, 1)
        dec = ys.reshape(1, padded, self.n_mels) * keep
        mel = self._postnet.run(None, {"dec": dec, "keep": keep})[0]
        return AcousticResult(mel=mel[:, :total], durations=durations, frames=total)


class OrtVocoder:
    """HifiGan on onnxruntime: mel [1, 80, frames] -> waveform float32 [1, 1, frames * hop_length]."""

    def __init__(
        self,
        graphs: Mapping[str, Union[bytes, str, os.PathLike[str]]],
        meta: Mapping[str, Any],
        threads: Optional[int] = None,
        graph_optimization: str = "all",
        providers: Optional[Sequence[str]] = None,
    ) -> None:
        dims = _section(meta, "vocoder")
        try:
            self.hop_length = int(dims["hop_length"])
            self.n_mels = int(dims["n_mels"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"onnx metadata: vocoder: missing or bad {exc}") from None
        loaded = _Graphs(VOCODER_GRAPHS, graphs, threads, graph_optimization, providers)
        self.providers = loaded.providers
        self._session = loaded.sessions["vocoder"]

    def __call__(self, mel) -> np.ndarray:
        mel = np.ascontiguousarray(np.asarray(mel), dtype=np.float32)
        if mel.ndim != 3 or mel.shape[0] != 1 or mel.shape[1] != self.n_mels or mel.shape[2] < 1:
            raise ValueError(
                f"OrtVocoder: expected mel of shape [1, {self.n_mels}, frames>=1], got {mel.shape}"
            )
        return self._session.run(None, {"mel": mel})[0]


# ------------------------------------------------------------------------------------------ loading


def graph_paths(
    artifact_dir: Union[str, os.PathLike[str]], names: Sequence[str] = GRAPHS
) -> Dict[str, str]:
    """{graph: path} of an artifact's graphs, ``<graph>.onnx`` beside config.json (an artifact is one flat
    folder: the push checks every file by name); ArtifactError naming a missing one."""
    root = Path(artifact_dir)
    out = {}
    for name in names:
        path = root / f"{name}.onnx"
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (not an onnxruntime artifact, or an interrupted build)")
        out[name] = str(path)
    return out


def _meta(artifact_dir: Union[str, os.PathLike[str]]) -> Mapping[str, Any]:
    config = read_config(Path(artifact_dir))
    meta = config.get("onnx")
    if not isinstance(meta, Mapping):
        raise ArtifactError(
            f"{Path(artifact_dir) / 'config.json'}: no 'onnx' section (not an onnxruntime artifact)"
        )
    return meta


def load(
    artifact_dir: Union[str, os.PathLike[str]],
    threads: Optional[int] = None,
    graph_optimization: str = "all",
    providers: Optional[Sequence[str]] = None,
) -> Tuple[OrtAcoustic, OrtVocoder]:
    """(OrtAcoustic, OrtVocoder) of an artifact directory (config.json ``onnx`` + ``*.onnx``). The
    files are not hash-checked here (the caller verifies the manifest)."""
    meta = _meta(artifact_dir)
    paths = graph_paths(artifact_dir)
    options = dict(threads=threads, graph_optimization=graph_optimization, providers=providers)
    return OrtAcoustic(paths, meta, **options), OrtVocoder(paths, meta, **options)


def load_component(
    artifact_dir: Union[str, os.PathLike[str]],
    component: str,
    threads: Optional[int] = None,
    graph_optimization: str = "all",
    providers: Optional[Sequence[str]] = None,
) -> Union[OrtAcoustic, OrtVocoder]:
    """One component ("acoustic" or "vocoder") of an artifact directory, as ``load`` reads it."""
    names = {"acoustic": ACOUSTIC_GRAPHS, "vocoder": VOCODER_GRAPHS}
    if component not in names:
        raise ValueError(f"component {component!r} is not one of acoustic, vocoder")
    meta = _meta(artifact_dir)
    paths = graph_paths(artifact_dir, names[component])
    cls = OrtAcoustic if component == "acoustic" else OrtVocoder
    return cls(paths, meta, threads=threads, graph_optimization=graph_optimization, providers=providers)
