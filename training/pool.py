"""Build the latent pool the latent-space recipes share (training/latents.py): rendered scenes encoded once by the
VAE. `python -m training.pool --n 30000`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import RUNS
from .latents import POOL, build


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--vae", type=Path, default=RUNS / "vae-final")
    parser.add_argument("--out", type=Path, default=POOL)
    args = parser.parse_args(argv)
    build(args.n, args.vae, args.out)


if __name__ == "__main__":
    main()
