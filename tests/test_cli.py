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


def test_an_internal_error_is_exit_2_with_its_traceback(monkeypatch, capsys):
    """A bug must not look like a failed budget (exit 1) to a CI gate."""
    import harness.commands.history as history

    def boom(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(history, "from_args", boom)
    assert main(["history"]) == 2
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "internal error" in err
