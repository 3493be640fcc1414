import sys

from plumbing.cli import run_main
from tuning.search.cli import main
from tuning.search.flags import PROG

sys.exit(run_main(main, PROG))
