"""``python -m imagebench.server start|stop|status`` (what ``make server`` runs)."""

import sys

from imagebench.server.service import main

sys.exit(main())
