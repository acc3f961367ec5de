import subprocess
import sys

from harness import __version__
from harness.cli import main


def test_version_in_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"edgebench {__version__}"


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: edgebench" in capsys.readouterr().out
