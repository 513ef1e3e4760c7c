"""`python -m kvstore.bench ...`: the load generator without the kvstore CLI."""

import sys

from kvstore.bench.cli import main

sys.exit(main())
