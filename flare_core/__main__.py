import sys

from flare_core.cli import main

sys.exit(main())
