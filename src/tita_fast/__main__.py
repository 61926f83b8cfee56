import sys

from tita_fast.cli import main

sys.exit(main())
