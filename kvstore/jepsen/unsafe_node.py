"""A deliberately broken node: ``kvstore serve`` that acknowledges writes before they
commit, so it loses acknowledged writes under faults. It exists to prove the checkers
catch that (``kvstore jepsen run --unsafe-ack-before-commit``).

Rule: the switch is reachable only by running this module
(``python -m kvstore.jepsen.unsafe_node serve ...``); no flag, environment variable or
config key of the ``kvstore`` command turns it on.
"""

from __future__ import annotations

import sys

from kvstore import cli

if __name__ == "__main__":
    sys.exit(cli.main(unsafe_ack_before_commit=True))
