"""``python -m portable_service`` and the ``portable-service`` command."""

import os
import signal
import sys
import threading


def deliver_lost_interrupts(unraisable: "sys.UnraisableHookArgs") -> None:
    """``sys.unraisablehook``: a Ctrl-C that lands in a callback Python runs for itself
    (the import lock's, when a module the build loads late is loaded) is printed as
    "Exception ignored" with a traceback, and lost: the command would go on. It is raised
    again here, and ends the command as any Ctrl-C does, in one line."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        # sent again from another thread, a moment later: raised in here, the interrupt
        # would be ignored too (Python runs a signal's handler as soon as it is sent)
        again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def run() -> None:
    """Start the command line; a Ctrl-C while it loads ends with one line, too.

    Ctrl-C is held while the modules load: an interrupt inside Python's import machinery
    is printed as "Exception ignored" with a traceback. A held one arrives when loading
    is done, inside the ``try``. One that lands in the import machinery later (a verb
    loads what it needs as it goes) is delivered again (:func:`deliver_lost_interrupts`).
    """
    sys.unraisablehook = deliver_lost_interrupts
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            from portable_service.cli import main, make_parser

            # imports every verb's module, or only the read verbs' for `ls IMAGE` and such
            parser = make_parser(sys.argv[1] if len(sys.argv) > 1 else None)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        code = main(parser=parser)
    except KeyboardInterrupt:
        sys.stderr.write("portable-service: interrupted; no image was written or changed\n")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
