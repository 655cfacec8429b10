"""AppTest runs a page script once per ``run()`` and does not tick fragments: every evaluation is
awaited before the page is drawn (ui.live's inline path), whatever the machine's load. The live
background path has its own tests (test_live_page.py) that lower this again."""

import os

os.environ.setdefault("PRUNING_EXPLORER_LIVE_INLINE_SECONDS", "600")
