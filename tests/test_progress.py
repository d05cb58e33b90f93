"""Log-mode progress: a step that outlasts the interval is named by a line from the heartbeat thread."""

import time

from robustbench_dml.progress import Progress


def _wait_for(capsys, predicate, seconds=30.0):
    out = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out += capsys.readouterr().out
        if predicate(out):
            return out
        time.sleep(0.05)
    return out


def test_a_long_step_is_named_every_interval_and_the_heartbeat_stops_with_the_bar(capsys):
    with Progress("log", total=2, title="rankaa28", interval=0.2) as bar:
        time.sleep(0.6)  # nothing begun: the heartbeat has nothing to name
        assert capsys.readouterr().out == ""
        bar.begin("QA- batch 1/2")
        out = _wait_for(capsys, lambda o: o.count("(QA- batch 1/2 running)") >= 2)
        assert out.count("(QA- batch 1/2 running)") >= 2  # one line per interval while the step runs
        assert all(line.startswith("rankaa28: 0/2 (QA- batch 1/2 running), ") and line.endswith(" left")
                   for line in out.splitlines())
        bar.advance("QA- batch 1/2")  # the step is over: the heartbeat stops naming it
        bar.finished("QA-")
        time.sleep(0.6)
    out = capsys.readouterr().out.split("\n")
    done = [i for i, line in enumerate(out) if line.startswith("rankaa28: 1/2 (QA- done), ")]
    assert done and not [line for line in out[done[0]:] if "running" in line]
    bar.begin("late")  # after the with block the thread is gone: no line however long we wait
    time.sleep(0.6)
    assert capsys.readouterr().out == ""


def test_bar_and_silent_modes_start_no_heartbeat(capsys):
    for mode in ("bar", None):
        with Progress(mode, total=1, title="t", interval=0.1) as bar:
            bar.begin("x batch 1/1")
            time.sleep(0.4)
            bar.advance("x batch 1/1")
        assert "running" not in capsys.readouterr().out
