"""Train a teacher: ``accelerate launch scripts/train_teacher.py --config configs/X.yaml [key=value | --key value ...]``.

The same entry point as ``hf-freqkd``: an error is one line from the main process (also shown as the
root cause in torch elastic's failure summary) and the process exits with hf-freqkd's code (2 bad
input, 1 failed run, 3 failed upload, 130 interrupted). On a failure the launcher exits 1 and adds its
own report; ``accelerate launch -q`` leaves the error line alone on a single process.
"""

import sys

from hf_freqkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
