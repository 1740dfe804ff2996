"""``python -m portable_service`` and the ``portable-service`` command."""

import sys


def run() -> None:
    """Start the command line; a Ctrl-C while it loads or parses ends quietly, too."""
    try:
        from portable_service.cli import main

        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("portable-service: interrupted; no image was written or changed\n")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
