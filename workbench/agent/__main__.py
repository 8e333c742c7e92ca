import sys

from workbench.agent.server import main

sys.exit(main())
