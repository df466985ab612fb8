import sys

from sycam.cli import main

sys.exit(main())
