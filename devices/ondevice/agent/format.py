"""The measurement record the agent prints, and the device-facts document: names, versions, fields.

This module is the one registry of the record's fields. The agent builds records from it and the
controller (``devices.record``) validates against it, so a field is declared in exactly one place.
Runs on the device: standard library only, Python 3.8+.

Record versions (bump RECORD_VERSION and keep a line here when the meaning of a field changes):
  1 -- first version (edgebench 0.1).
  2 -- interference: samples carry cpu_s, others_cpu_s, psi_some_s and ``disturbed``; a disturbed sample
       is measured again within a budget and the re-measurement appended (``remeasure_of``), so a process
       may hold more samples than its steady state; processes carry ``disturbed``, ``disturbed_reason``
       and ``interference`` (devices.ondevice.agent.interference).
"""

from __future__ import annotations

from collections import namedtuple

RECORD_FORMAT = "edgebench.measurement"
RECORD_VERSION = 2
KNOWN_RECORD_VERSIONS = (1, 2)

# `python3 bundle facts` prints {"format": FACTS_FORMAT, "version": FACTS_VERSION, "facts": {FACTS}}.
# Facts versions: 1 -- first version.
FACTS_FORMAT = "edgebench.facts"
FACTS_VERSION = 1
KNOWN_FACTS_VERSIONS = (1,)

# Version of the agent's code (measurement protocol implementation); recorded in every record.
AGENT_VERSION = "1.0"

# Why a worker stopped iterating: "target" = both min_iters and min_seconds reached (at the end of
# a balanced round of the corpus schedule), "max_iters" = the hard cap, "deadline" = the process's
# share of the overall timeout ran out (fewer samples than asked for; the record still says so).
STOP_REASONS = ("target", "max_iters", "deadline")

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUSES = (STATUS_OK, STATUS_FAILED)

# kind: "str" | "int" | "float" (an int is accepted) | "bool" | "list" | "dict"; nullable: None allowed;
# required: False for fields added beyond contracts.md's minimum (a record without them is still valid,
# e.g. one written by a test helper or an older agent of the same version; checked when present).
Field = namedtuple("Field", "name kind nullable doc required")
Field.__new__.__defaults__ = (True,)

FACT_FIELDS = (
    Field("cpu_model", "str", True, "/proc/cpuinfo model name (or Model/Hardware on ARM boards)"),
    Field("cores", "int", True, "os.cpu_count()"),
    Field("cores_available", "int", True, "CPUs this process may run on (sched_getaffinity)", False),
    Field("governor", "str", True, "cpufreq scaling_governor of cpu0"),
    Field("freq_mhz", "float", True, "current frequency of cpu0 (scaling_cur_freq, else cpuinfo MHz)"),
    Field("freq_max_mhz", "float", True, "hardware maximum frequency (cpuinfo_max_freq)", False),
    Field("freq_cap_mhz", "float", True, "policy cap (scaling_max_freq; thermal limits lower it)", False),
    Field("temp_c", "float", True, "hottest CPU/SoC thermal zone in /sys/class/thermal"),
    Field("throttled_flags", "str", True, "`vcgencmd get_throttled` value, e.g. 0x50000"),
    Field("load_avg", "list", True, "1, 5 and 15 minute load averages"),
    Field("mem_total_bytes", "int", True, "MemTotal"),
    Field("mem_available_bytes", "int", True, "MemAvailable"),
    Field("os", "str", True, "distribution name (os-release PRETTY_NAME) or platform.system()"),
    Field("kernel", "str", True, "platform.release()", False),
    Field("machine", "str", True, "platform.machine()"),
    Field("python", "str", True, "platform.python_version()"),
    Field("torch", "str", True, "torch version"),
    Field("quantized_engine", "str", True, "torch.backends.quantized.engine"),
    Field("onnxruntime", "str", True, "onnxruntime version (null: not installed)", False),
    Field("ort_providers", "list", True, "execution providers the onnxruntime session used (an onnxruntime "
          "variant's worker), else null", False),
    Field("hostname", "str", True, "socket.gethostname()"),
    Field("board_model", "str", True, "/proc/device-tree/model (Raspberry Pi, Jetson); null elsewhere",
          False),
    Field("cpu_part", "str", True, "ARM core named from /proc/cpuinfo CPU implementer/part, e.g. "
          "'Cortex-A76 (0x41:0xd0b)'", False),
    Field("cpu_features", "list", True, "/proc/cpuinfo Features of an ARM core (asimd, asimddp, ...)", False),
    Field("throttled_conditions", "list", True, "throttled_flags decoded, e.g. ['under-voltage now', "
          "'throttled since boot']", False),
)

PROTOCOL_FIELDS = (
    Field("processes", "int", False, "fresh worker processes, one after another"),
    Field("warmup", "int", False, "iterations run and dropped after the first inference"),
    Field("min_iters", "int", False, "steady-state iterations at least"),
    Field("min_seconds", "float", False, "steady-state seconds at least"),
    Field("max_iters", "int", False, "hard cap on steady-state iterations"),
    Field("threads", "int", True, "torch.set_num_threads, null = torch's default"),
    Field("timeout_s", "float", False, "overall timeout of the agent's measurement", False),
    Field("sentences", "list", False, "length classes of the corpus measured", False),
    Field("seed", "int", False, "seed of the corpus schedule", False),
    Field("sentence_ids", "list", True, "only these corpus sentences (null: all of the classes)", False),
    Field("quantized_engine", "str", True, "engine asked for (null: the board's default; the engine used is "
          "in facts_before)", False),
    Field("stream_chunk_frames", "int", True, "streaming synthesis chunk (mel frames); null: whole utterance",
          False),
    Field("ort_graph_optimization", "str", True, "ONNX Runtime graph optimisation level (onnxruntime "
          "variants)",
          False),
    Field("ort_providers", "list", True, "ONNX Runtime execution providers asked for, in order", False),
)

PHASE_FIELDS = (
    Field("import_s", "float", True, "import the runtime (torch, or numpy and onnxruntime), the model code"),
    Field("acoustic_load_s", "float", True, "load the acoustic model (state_dict, or ONNX sessions)"),
    Field("vocoder_load_s", "float", True, "load the vocoder (state_dict, or ONNX session)"),
    Field("first_inference_s", "float", True, "first full synthesis; never part of the samples"),
)

SAMPLE_FIELDS = (
    Field("iteration", "int", False, "0-based index in the steady state (after warmup)"),
    Field("sentence_id", "str", False, "corpus sentence id"),
    Field("length_class", "str", False, "short | medium | long"),
    Field("emotion", "str", False, "one of the 7 emotions"),
    Field("phones", "int", False, "phone tokens from the frontend"),
    Field("frames", "int", False, "mel frames from the acoustic model"),
    Field("audio_s", "float", False, "seconds of audio synthesised"),
    Field("frontend_s", "float", False, "text -> id tensors"),
    Field("acoustic_s", "float", False, "acoustic model forward"),
    Field("vocoder_s", "float", False, "vocoder forward"),
    Field("total_s", "float", False, "frontend + acoustic + vocoder, one clock"),
    Field("cpu_s", "float", True, "CPU seconds of the measuring process during the sample", False),
    Field("others_cpu_s", "float", True, "CPU seconds other processes used on its CPUs meanwhile", False),
    Field("psi_some_s", "float", True, "growth of /proc/pressure/cpu 'some' meanwhile (seconds)", False),
    Field("disturbed", "bool", False, "interference took the CPU (never counted in statistics)", False),
    Field("remeasure_of", "int", True, "the disturbed iteration this sample measures again", False),
    Field("ttfa_s", "float", True, "time to first audio: text in to the first chunk of samples out (the "
          "whole synthesis when not streaming)", False),
    Field("rt_margin_s", "float", True, "streaming: how early the worst chunk was ready before the previous "
          "one finished playing (negative: playback stalled); null: one chunk or not streaming", False),
    Field("chunks", "int", True, "audio chunks handed over (1 when not streaming)", False),
)

PROCESS_FIELDS = (
    Field("index", "int", False, "0-based process number"),
    Field("status", "str", False, "ok | failed"),
    Field("error", "str", True, "why the process failed (null when ok)"),
    Field("exit_code", "int", True, "exit status; negative = killed by that signal; null = never started"),
    Field("wall_s", "float", True, "wall time of the process, as seen by the supervisor"),
    Field("phases", "dict", False, "PHASE_FIELDS"),
    Field("peak_rss_bytes", "int", True, "max(wait4 ru_maxrss, polled VmHWM), read from outside"),
    Field("rss_anon_bytes", "int", True, "RssAnon at the polled sample with the highest RSS"),
    Field("rss_file_bytes", "int", True, "RssFile at the polled sample with the highest RSS"),
    Field("ru_maxrss_bytes", "int", True, "os.wait4 ru_maxrss of the worker", False),
    Field("vm_hwm_bytes", "int", True, "last VmHWM polled from /proc/PID/status", False),
    Field("rss_polls", "int", False, "how many /proc/PID/status samples were read", False),
    Field("temp_max_c", "float", True, "hottest temperature polled while the process ran", False),
    Field("threads", "int", True, "torch.get_num_threads() in the worker (onnxruntime: intra-op threads "
          "asked "
          "for, null: its default)", False),
    Field("warmup_done", "int", True, "warmup iterations run and dropped", False),
    Field("stop_reason", "str", True, "STOP_REASONS (null when the worker did not report)", False),
    Field("steady_s", "float", True, "wall seconds of the steady state (all samples)", False),
    Field("facts_before", "dict", False, "FACT_FIELDS"),
    Field("facts_after", "dict", False, "FACT_FIELDS"),
    Field("throttled", "bool", False, "the device throttled around or during this process"),
    Field("hot", "bool", False, "temperature above the limit around or during this process"),
    Field("disturbed", "bool", False, "interference left after re-measuring, or a throttled device", False),
    Field("disturbed_reason", "str", True, "what disturbed it (null when not disturbed)", False),
    Field("interference", "dict", True, "cpu_share, contention, psi_some_frac, samples_disturbed, "
          "remeasured, unreplaced (devices.ondevice.agent.interference)", False),
    Field("outputs", "dict", True, "one sentence's durations, mel and waveform for the controller to compare "
          "(devices.ondevice.outputs; the controller replaces it with output_check)", False),
    Field("output_check", "dict", True, "the controller's comparison of outputs with its own", False),
    Field("memory_timeline", "dict", True, "RSS polled from outside: t_s (since the process started), "
          "rss_bytes, hwm_bytes, and marks: when import, load, first_inference, steady (state) and end "
          "finished (seconds on the same clock)", False),
    Field("samples", "list", False, "SAMPLE_FIELDS, one per steady-state iteration, then re-measurements"),
)

RECORD_FIELDS = (
    Field("format", "str", False, "RECORD_FORMAT"),
    Field("version", "int", False, "RECORD_VERSION"),
    Field("status", "str", False, "ok when every process is ok, else failed"),
    Field("error", "str", True, "why the record is failed (null when ok)"),
    Field("variant", "str", False, "variant name given on the command line"),
    Field("artifact", "str", True, "content_hash of the artifact's manifest (null if unreadable)"),
    Field("agent_version", "str", False, "AGENT_VERSION"),
    Field("protocol", "dict", False, "PROTOCOL_FIELDS"),
    Field("hot_limit_c", "float", False, "temperature above which a process is flagged hot", False),
    Field("facts_before", "dict", False, "FACT_FIELDS, before the first process"),
    Field("facts_after", "dict", False, "FACT_FIELDS, after the last process"),
    Field("throttled", "bool", False, "any process throttled, or the facts say so"),
    Field("hot", "bool", False, "any process hot, or the facts say so"),
    Field("processes", "list", False, "PROCESS_FIELDS, one per fresh process"),
)


def field_names(fields):
    """The names of a field tuple, in order."""
    return tuple(f.name for f in fields)


def empty_facts():
    """A facts dict with every field None (what a device that cannot tell us anything reports)."""
    return {f.name: None for f in FACT_FIELDS}
