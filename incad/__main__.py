"""``python -m incad``: the ``incad`` command, also what ``torchrun ... -m incad run x.yaml`` starts in every process."""

import sys

from incad.cli import main

sys.exit(main())
