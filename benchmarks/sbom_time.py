"""CPU seconds of the SBOM step (``sbom.build_document``) of one spec's build plan.

    PYTHONPATH=src python3 benchmarks/sbom_time.py SPEC_FOLDER

Prints the step's CPU seconds, the first 16 hex digits of the document's sha256 (the same
bytes before and after a change) and its size, then the whole plan's CPU seconds. Run it
alternately with another checkout's ``src`` on PYTHONPATH to compare.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    from portable_service.builder import pipeline, sbom
    from portable_service.builder.spec import load_spec

    spec = load_spec(Path(sys.argv[1]))
    build_document = sbom.build_document

    def timed(*args: Any, **kwargs: Any) -> bytes:
        start = time.process_time()
        document = build_document(*args, **kwargs)
        print(f"sbom cpu {time.process_time() - start:.2f}",
              hashlib.sha256(document).hexdigest()[:16], len(document))
        return document

    sbom.build_document = timed  # type: ignore[assignment]
    start = time.process_time()
    pipeline.plan(spec)
    print(f"plan cpu {time.process_time() - start:.2f}")


if __name__ == "__main__":
    main()
