"""engine.interrupts in-process: a stop request is raised once, at a safe point, and never lost.

The subprocess tests (exit status 130, one line, outputs, re-run) are in tests/test_reliability.py."""
import ctypes
import importlib.abc
import importlib.machinery
import os
import signal
import sys
import time

import pytest

from imprint.engine import interrupts as I


@pytest.fixture
def handler():
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook)
    assert I.install()
    try:
        yield
    finally:
        I.uninstall()
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook) == before
        assert I.requested() is None


def _wait_for_interrupt(seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_raised_once_and_later_signals_ignored(handler, sig):
    with pytest.raises(I.Interrupted) as e:
        os.kill(os.getpid(), sig)
        _wait_for_interrupt()
    assert e.value.args == (sig,) and I.requested() == sig
    # cleanup after the first is not cut short by a second or third request
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    _wait_for_interrupt(0.2)


def test_deferred_block_runs_to_its_end_then_raises(handler):
    done = []
    with pytest.raises(I.Interrupted):
        with I.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_interrupt(0.2)  # not raised in here
            done.append(1)
    assert done == [1]


def test_hold_until_release(handler):
    I.uninstall()
    assert I.install(hold=True)
    os.kill(os.getpid(), signal.SIGINT)
    _wait_for_interrupt(0.2)  # held: no exception before release()
    with pytest.raises(I.Interrupted):
        I.release()


class _SlowModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A module ``imprint_test_slow_import`` whose body receives SIGTERM half-way through."""

    def find_spec(self, name, path=None, target=None):
        if name == "imprint_test_slow_import":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        os.kill(os.getpid(), signal.SIGTERM)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # Python bytecode runs here: the handler gets its chance
            pass
        module.finished = True


def test_signal_during_an_import_waits_for_the_import(handler):
    finder = _SlowModule()
    sys.meta_path.insert(0, finder)
    try:
        with pytest.raises(I.Interrupted):
            import imprint_test_slow_import  # noqa: F401
            _wait_for_interrupt()
        mod = sys.modules["imprint_test_slow_import"]  # imported completely, not an ImportError half-way
        assert mod.finished is True
    finally:
        sys.meta_path.remove(finder)
        sys.modules.pop("imprint_test_slow_import", None)


def test_retry_handled_while_its_timer_thread_is_alive_schedules_the_next(handler, monkeypatch):
    """The race behind a CI failure: the retry's handler can run (again inside an import) while the timer thread that
    triggered it has not yet ended. That handler must schedule the next retry, else the request is lost and the job
    runs to its end. Timers are replaced by a fake whose thread stays "alive" until its function returns, and the
    interrupt runs the handler at once, inside the timer's function -- the worst interleaving."""
    timers = []

    class FakeTimer:
        def __init__(self, interval, fn):
            self.fn, self.alive, self.daemon = fn, False, False
            timers.append(self)

        def start(self):
            self.alive = True

        def is_alive(self):
            return self.alive

        def run(self):
            self.fn()
            self.alive = False

    in_import = [True]
    monkeypatch.setattr(I.threading, "Timer", FakeTimer)
    monkeypatch.setattr(I, "_in_import", lambda frame: in_import[0])
    import _thread

    monkeypatch.setattr(_thread, "interrupt_main", lambda signum: I._handler(signum, None))
    I._handler(signal.SIGTERM, None)  # arrives inside an import: deferred to a retry
    assert len(timers) == 1
    for n in range(1, 4):  # each retry lands inside an import again
        timers[-1].run()
        assert len(timers) == n + 1, "the retry was lost"
    in_import[0] = False  # the import is over: the next retry delivers it
    with pytest.raises(I.Interrupted):
        timers[-1].run()
    assert I.requested() == signal.SIGTERM


def test_swallowed_in_a_ctypes_callback_is_delivered_again(handler, capsys):
    """Raised inside a ctypes callback (as in llvmlite's object cache) the exception is swallowed by ctypes; it is
    then raised again outside, silently (no "Exception ignored ... Traceback")."""
    calls = []

    def body():
        calls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass

    cb = ctypes.CFUNCTYPE(None)(body)
    with pytest.raises(I.Interrupted):
        cb()
        _wait_for_interrupt()
    assert calls == [1]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_other_unraisable_exceptions_still_reported(handler):
    seen = []
    I.uninstall()
    old = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        assert I.install()
        cb = ctypes.CFUNCTYPE(None)(lambda: 1 / 0)
        cb()
        assert len(seen) == 1 and isinstance(seen[0].exc_value, ZeroDivisionError)
    finally:
        I.uninstall()
        sys.unraisablehook = old
        I.install()


def test_not_installed_outside_the_main_thread():
    import threading

    res = []
    t = threading.Thread(target=lambda: res.append(I.install()))
    t.start()
    t.join()
    assert res == [False] and not I.installed()


def test_request_noted_before_install_is_held_then_delivered_once(handler):
    """The console entry's early handler notes a request before engine.interrupts is imported; request() hands it
    over: held while install(hold=True) holds, raised at release(), and only once."""
    I.uninstall()
    assert I.install(hold=True)
    I.request(signal.SIGINT)
    assert I.requested() == signal.SIGINT
    with pytest.raises(I.Interrupted) as e:
        I.release()
    assert e.value.args == (signal.SIGINT,)
    I.check()  # delivered once: nothing more to raise
    I.request(signal.SIGTERM)  # a later request neither replaces the first nor raises again
    assert I.requested() == signal.SIGINT
