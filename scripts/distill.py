"""Distil a student: ``accelerate launch scripts/distill.py --config configs/X.yaml [key=value ...]``."""

import sys

from hf_freqkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
