"""SIGTERM / Ctrl-C for the command-line jobs: stop once, at a safe point, and exit 130 with one line.

Why not simply ``raise KeyboardInterrupt`` from a signal handler: Python runs the handler between two bytecodes of
whatever the main thread is doing, so the exception can surface

* inside an ``import`` (a C extension's init turns it into ``ImportError: numba._devicearray ...``),
* inside a ctypes callback (llvmlite's object cache): printed as "Exception ignored in ..." with a traceback,
  swallowed, and the job then runs to the end and exits 0,
* inside click, which turns it into ``Abort`` after printing a blank line,
* during interpreter shutdown (thread joins, atexit, C++ thread pools): exit status -2 (an uncaught
  ``KeyboardInterrupt`` is re-raised as SIGINT) or -6 (SIGABRT).

Here the handler only records the request and raises :class:`Interrupted` (a ``BaseException`` that is neither
``Exception`` nor ``KeyboardInterrupt``, so ``except Exception`` and click let it through) **once**, and only at a safe
point: never while an import is running, never inside a :func:`deferred` block (writing the outputs), never before
:func:`release` (the CLI's ``try`` is not entered yet). A deferred or swallowed interrupt is retried shortly after.
Later signals are ignored: cleanup (``finally`` blocks removing temporary files, joining threads) runs to its end.
:func:`exit_interrupted` prints the one line and leaves with ``os._exit(130)``, skipping interpreter shutdown.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

MESSAGE = "interrupted; re-run the same command to resume"
EXIT_CODE = 130
_RETRY_S = 0.05


class Interrupted(BaseException):
    """The job was asked to stop (SIGTERM or Ctrl-C); ``args[0]`` is the signal number."""


class _State:
    def __init__(self):
        self.installed = False
        self.requested = None  # signal number of the first request, else None
        self.delivered = False  # Interrupted was raised (and not reported swallowed)
        self.depth = 0  # > 0: inside deferred() / before release()
        self.timer = None
        self.retry_pending = False  # a retry is scheduled and has not yet fired
        self.previous = None  # (SIGTERM handler, SIGINT handler, unraisablehook) before install()


_S = _State()


def requested() -> int | None:
    """The signal number of the pending or delivered stop request, or ``None``."""
    return _S.requested


def _in_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _retry(signum: int) -> None:
    """Run the handler again in a moment (the main thread may not run Python code before then).

    The pending flag, not ``timer.is_alive()``, says whether a retry is on its way: the timer's thread is still
    alive for a moment after it fired, and the handler it triggers can run (again inside an import) in that moment.
    With ``is_alive()`` that handler saw a retry "in flight", scheduled none, and the request was lost: the job ran
    to its end and wrote its outputs (the CI failure of a stop 30 ms after start)."""
    if _S.retry_pending:
        return
    _S.retry_pending = True
    main = threading.main_thread().ident

    def fire():
        _S.retry_pending = False  # before the interrupt: the handler it triggers may need to schedule the next one
        if _S.delivered:
            return
        try:
            import _thread

            _thread.interrupt_main(signum)  # Python >= 3.10: runs the Python handler of signum in the main thread
        except (TypeError, ValueError):  # pragma: no cover - older Python
            signal.pthread_kill(main, signum)

    _S.timer = threading.Timer(_RETRY_S, fire)
    _S.timer.daemon = True
    _S.timer.start()


def _handler(signum, frame):  # pragma: no cover - exercised by subprocess tests (tests/test_reliability.py)
    if _S.requested is None:
        _S.requested = signum
    if _S.delivered:
        return  # stop once; later signals must not break the cleanup of the first
    if _S.depth > 0:
        return  # raised when the deferred block ends (release() / deferred())
    if _in_import(frame):
        _retry(_S.requested)
        return
    _S.delivered = True
    raise Interrupted(_S.requested)


def _unraisable(unraisable):
    """An Interrupted raised inside a callback that cannot propagate it: no traceback, deliver it again later."""
    if isinstance(unraisable.exc_value, Interrupted):
        _S.delivered = False
        _retry(_S.requested or signal.SIGTERM)
        return
    previous = _S.previous[2] if _S.previous else sys.__unraisablehook__
    previous(unraisable)


def install(*, hold: bool = False) -> bool:
    """Route SIGTERM and SIGINT to the once-only, safe-point handler (main thread only).

    Parameters
    ----------
    hold : bool
        Hold requests until :func:`release` (use before the caller's ``try`` exists).

    Returns
    -------
    bool
        False when not called from the main thread (embedded use): nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if not _S.installed:
        if hold:
            _S.depth += 1
        _S.previous = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook)
        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
        sys.unraisablehook = _unraisable
        _S.installed = True
    return True


def uninstall() -> None:
    """Restore the handlers :func:`install` replaced and forget any request (in-process callers, tests)."""
    if not _S.installed or threading.current_thread() is not threading.main_thread():
        return
    term, intr, hook = _S.previous
    signal.signal(signal.SIGTERM, term if term is not None else signal.SIG_DFL)
    signal.signal(signal.SIGINT, intr if intr is not None else signal.default_int_handler)
    sys.unraisablehook = hook
    _S.__init__()


def ignore_from_now() -> None:
    """The job is over and its exit status decided: ignore SIGTERM / SIGINT for the rest of the process.

    Interpreter shutdown resets Python-level handlers to the default action (die of the signal: status -2 / -15
    after the outputs were written) but keeps ``SIG_IGN``; a stop request has nothing left to stop by then.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def installed() -> bool:
    """Whether :func:`install` routed SIGTERM / SIGINT here in this process."""
    return _S.installed and signal.getsignal(signal.SIGTERM) is _handler


def request(signum: int) -> None:
    """Record a stop request that arrived before :func:`install` (the console entry's early handler notes it): it is
    then held and delivered exactly like one the handler received."""
    if _S.requested is None:
        _S.requested = int(signum)
    if _S.depth == 0:
        _raise_pending()


def _raise_pending() -> None:
    if _S.requested is not None and not _S.delivered:
        _S.delivered = True
        raise Interrupted(_S.requested)


def release() -> None:
    """End the hold of :func:`install` ``(hold=True)``; raise :class:`Interrupted` if a request is pending."""
    if _S.depth > 0:
        _S.depth -= 1
    if _S.depth == 0:
        _raise_pending()


@contextmanager
def deferred():
    """Hold stop requests while the block runs (e.g. writing a set of outputs); raise at its end if one came.

    A block that raises keeps its own exception; a request then still ends the job (see :func:`exit_interrupted`).
    """
    _S.depth += 1
    try:
        yield
    finally:
        _S.depth -= 1
    if _S.depth == 0:
        _raise_pending()


def check() -> None:
    """A safe point: raise :class:`Interrupted` if a stop was requested and not yet delivered."""
    if _S.depth == 0:
        _raise_pending()


def exit_interrupted() -> None:
    """Print the one line on stderr and leave now with status 130 (no interpreter shutdown, no thread joins)."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed pipe must not stop the exit
        pass
    try:
        sys.stderr.flush()
        lead = "\n" if sys.stderr.isatty() else ""  # end the terminal's "^C" (or a progress bar) first
        os.write(2, (lead + MESSAGE + "\n").encode())
    except Exception:  # noqa: BLE001
        pass
    os._exit(EXIT_CODE)
