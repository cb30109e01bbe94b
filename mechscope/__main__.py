import sys

from mechscope.cli import main

sys.exit(main())
