"""Write the procedurally generated 16-class set: DIR/{train,eval}.h5 + class_labels_indices.csv."""

from __future__ import annotations

import argparse
import json
import time

from dcls_audio.data.synthetic import make_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train", type=int, default=1024, help="training clips")
    ap.add_argument("--eval", type=int, default=256, help="evaluation clips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--empty",
        type=int,
        default=0,
        help="PANNs-style empty rows appended to each file (for testing)",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    info = make_synthetic(
        args.out, n_train=args.train, n_eval=args.eval, seed=args.seed, n_empty=args.empty
    )
    info["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
