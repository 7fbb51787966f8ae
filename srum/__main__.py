# SPDX-License-Identifier: Apache-2.0
"""``python -m srum`` (and ``torchrun -m srum``) runs the command line."""
import sys

from srum.cli import main

sys.exit(main())
