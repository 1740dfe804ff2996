"""python -m portable_service.rules ROOT...: store each root's systemd facts as data files."""

import sys
from pathlib import Path

from portable_service.rules import refresh

for arg in sys.argv[1:]:
    print(f"{arg}: systemd {refresh(Path(arg))}")
