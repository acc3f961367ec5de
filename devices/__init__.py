"""Devices: inventory, transports (local, SSH through fabric), the agent bundle and push, health checks."""
