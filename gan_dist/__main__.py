"""`python -m gan_dist`: the command, which is also a Ray job's entrypoint. A Python that lacks
gan-dist's dependencies gets one line saying so, not a traceback (gan_dist.dependencies)."""

import sys

from gan_dist.dependencies import missing_dependency

try:
    from gan_dist.cli import main
except ModuleNotFoundError as exc:  # PyYAML and the like are imported with the command itself
    print(missing_dependency(exc), file=sys.stderr)
    sys.exit(2)

sys.exit(main())
