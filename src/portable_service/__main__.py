"""``python -m portable_service`` and the ``portable-service`` command."""

import signal
import sys


def run() -> None:
    """Start the command line; a Ctrl-C while it loads ends with one line, too.

    Ctrl-C is held while the modules load: an interrupt inside Python's import machinery
    is printed as "Exception ignored" with a traceback. A held one arrives when loading
    is done, inside the ``try``.
    """
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
