"""`python -m charlstm` (and `torchrun -m charlstm`) run the command line."""

import sys

from .cli import main

sys.exit(main())
