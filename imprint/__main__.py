"""``python -m imprint`` and the ``imprint`` console script.

SIGTERM and Ctrl-C are caught from the first line of this module: a request that arrives while anything is being
imported -- even ``signal`` and ``threading``, which :mod:`engine.interrupts` needs -- is noted by a minimal handler
on the builtin ``_signal`` module, then handed to :mod:`engine.interrupts` (held until the CLI can act on it)
before click, numpy, Numba and the rest are imported.  So a stop request at start-up ends the job with the one line
and status 130, not a ``KeyboardInterrupt`` traceback.

What is left is the interpreter's own start-up before this module runs (``site``, including an editable install's
path finder: about 20 ms on a quiet machine), where Python's default handlers apply.  A launcher that must close
that window too can start imprint with SIGINT and SIGTERM *blocked* (the signal mask survives ``exec``):
:func:`main` unblocks them once the handler is in place, so a request that came during start-up is delivered then.
"""

import _signal  # builtin (no import machinery runs): the early handler goes in before anything else

_EARLY: list = []


def _early(signum, frame):  # only notes the request: raising here could break an import half-way
    _EARLY.append(signum)


try:
    _PREVIOUS = (_signal.signal(_signal.SIGINT, _early), _signal.signal(_signal.SIGTERM, _early))
except ValueError:  # not the main thread (imported by an embedding program): leave its handlers alone
    _PREVIOUS = None


def main(argv=None) -> None:
    """Console entry point: install the stop-request handler, then run :func:`engine.cli.main`."""
    from imprint.engine import interrupts  # os, signal, sys, threading: nothing heavy

    if interrupts.install(hold=True):  # released by engine.cli.main inside its try
        import signal

        if _EARLY:
            interrupts.request(_EARLY[0])  # came while the line above was importing: held like any other
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # see the module docstring
    from imprint.engine.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
