import sys

from pitcrew_builder.cli import main

sys.exit(main())
