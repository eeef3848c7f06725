from . import run

run()  # python -m lmzip.cli, as before the command line became a folder
