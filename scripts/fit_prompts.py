"""FreeKD stage 1: ``accelerate launch scripts/fit_prompts.py --config configs/X.yaml [key=value ...]``."""

import sys

from hf_freqkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit-prompts", *sys.argv[1:]]))
