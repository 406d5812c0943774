import sys

from wheelsched.cli import main

sys.exit(main())
