"""edgebench controller: configuration, CLI, orchestration, results store, statistics and the gate."""

__version__ = "0.1.0"
