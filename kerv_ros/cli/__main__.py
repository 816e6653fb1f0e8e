"""``python -m kerv_ros.cli``, as the ``kerv`` script."""

import sys

from kerv_ros.cli import main

sys.exit(main())
