import sys

from gan_dist.cli import main

sys.exit(main())
