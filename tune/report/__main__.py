import sys

from tune.report.page import main

sys.exit(main())
