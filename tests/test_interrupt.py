"""Ctrl-C cannot be lost: a KeyboardInterrupt swallowed by a finaliser still stops the work."""

from __future__ import annotations

import os
import signal

import pytest

from audit import interrupt


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_swallowed_interrupt_is_remembered_and_raised_at_the_next_check():
    old = signal.getsignal(signal.SIGINT)
    try:
        interrupt.install()
        interrupt.check()  # nothing pressed: no effect

        class Finaliser:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands inside __del__: Python ignores the exception

        Finaliser()
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    finally:
        interrupt.uninstall()
    assert not interrupt.requested() and signal.getsignal(signal.SIGINT) is old
    interrupt.check()  # forgotten: library code after the command is not interrupted
