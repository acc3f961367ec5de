"""The code that runs on the device, as one package: the agent (supervisor, worker, device facts),
the measurement protocol, the artifact format's reader and loader, the frontend, symbol tables, the
corpus and the model code.

It needs only the standard library and a runtime: torch (Python 3.8+, torch 1.13+), or numpy and
onnxruntime for an onnxruntime artifact (``ort``; torch is then never imported, so a board without torch
measures those). The frontend's pinyin dictionaries come as the pure-Python ``pypinyin`` package in the
bundle. The bundle ships it whole
(``devices.bundle``), and the controller imports the same modules, so both sides read artifacts and
protocols with the same code. ``tests/test_ondevice.py`` checks that nothing else is imported.
"""
