"""python -m rnnfast.torch: time a training step with rnnfast.torch against torch.nn (the command line:
rnnfast._torch_cli)."""

import sys

from rnnfast._torch_cli import main

sys.exit(main())
