import sys

from .cli import main
from .distributed import exit_worker, launched

code = main()
if launched():  # a worker that resnet-fmnist --workers N started (common.distributed.launch)
    exit_worker(code)
sys.exit(code)
