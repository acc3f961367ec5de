import io

from harness.progress import Progress


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with Progress(stream=out) as progress:
        progress.callback("build")("pruned: step 1 'prune'")
        task = progress.add_task("measure run-1", total=2)
        progress.advance(task, "local/original: ok")
        progress.advance(task, "local/pruned: failed")
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "build: pruned: step 1 'prune'",
        "measure run-1 (2 to do)",
        "measure run-1 [1/2] local/original: ok",
        "measure run-1 [2/2] local/pruned: failed",
    ]


def test_disabled_prints_nothing():
    out = io.StringIO()
    with Progress(enabled=False, stream=out) as progress:
        progress.callback("build")("x")
        progress.advance(progress.add_task("m", total=1), "y")
    assert out.getvalue() == ""
