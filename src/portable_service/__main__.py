import sys

from portable_service.cli import main

sys.exit(main())
