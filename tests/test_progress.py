"""Progress: plain time-stamped lines for logs at a steady rate, resumed bars, inner loops moving the bar."""

from __future__ import annotations

import io
import re
import time

from audit.progress import PlainProgress, Within


def test_plain_progress_prints_a_line_at_a_steady_rate_even_inside_a_long_step():
    out = io.StringIO()
    progress = PlainProgress(out, interval=0.05)
    with progress.task("training models", total=100, unit="models", completed=40) as bar:
        time.sleep(0.3)  # one long block: no advance at all, lines must still come
        bar.advance(10)
        time.sleep(0.12)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("[started]") and "40/100 models (40%)" in lines[0]  # resumed: counts from what is done
    assert lines[-1].endswith("[done]") and "50/100 models (50%)" in lines[-1]
    ticks = [line for line in lines if not line.endswith("]")]
    assert len(ticks) >= 4  # a line every interval while it ran
    assert all(re.match(r"\d\d:\d\d:\d\d training models: ", line) for line in lines)
    assert any("models/s, about" in line for line in ticks[-2:])


def test_an_interrupted_task_is_logged_as_stopped_not_done():
    out = io.StringIO()
    progress = PlainProgress(out, interval=10)
    try:
        with progress.task("fitting", total=10, unit="steps") as bar:
            bar.advance(3)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    last = out.getvalue().splitlines()[-1]
    assert last.endswith("[stopped]") and "3/10 steps (30%)" in last and "left" not in last


def test_plain_progress_survives_a_closed_log():
    out = io.StringIO()
    progress = PlainProgress(out, interval=10)
    out.close()
    with progress.task("x", total=1) as bar:
        bar.advance(1)


class _Bar:
    def __init__(self) -> None:
        self.count = 0.0

    def advance(self, n: float = 1) -> None:
        self.count += n


def test_an_inner_loop_moves_the_outer_bar_by_its_share():
    outer = _Bar()
    inner = Within(outer, share=250)
    with inner.task("training block", total=16, unit="epochs") as epochs:
        for _ in range(8):
            epochs.advance(1)
    assert outer.count == 125  # half the epochs: half the block's models
    inner.finish()
    assert outer.count == 250
    inner.finish()
    assert outer.count == 250  # never more than the share


def test_a_piped_command_logs_time_stamped_progress(tmp_path):
    """stderr to a pipe (a CI log): plain lines, no terminal bar codes."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "AUDIT_QUIET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "audit", "train", "digits", "--run", str(tmp_path / "r"), "-m", "20",
                           "--block-size", "10", "-o", "epochs=1", "-o", "hidden=8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "training models" in line]
    assert lines and lines[0].endswith("[started]") and lines[-1].endswith("[done]")
    assert "20/20 models (100%)" in lines[-1] and "\x1b[" not in proc.stderr
