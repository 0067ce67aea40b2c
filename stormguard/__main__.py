import sys

from stormguard.cli import main

sys.exit(main())
