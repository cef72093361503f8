"""``python -m binllm``: the command line (:mod:`binllm.cli`)."""
import sys

from binllm.cli import main

sys.exit(main())
