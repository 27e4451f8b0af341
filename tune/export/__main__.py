import sys

from tune.export.best import main

sys.exit(main())
