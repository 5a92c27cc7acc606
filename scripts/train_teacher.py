"""Train a teacher: ``accelerate launch scripts/train_teacher.py --config configs/X.yaml [key=value ...]``."""

import sys

from hf_freqkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
