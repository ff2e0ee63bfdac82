"""Pack audio files + an AudioSet segments CSV into a PANNs-layout HDF5 file (resumable)."""

from __future__ import annotations

import argparse
import json
import logging

from dcls_audio.data.pack import pack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--audio-dir", required=True, help="folder with wav/flac/ogg/mp3 files")
    ap.add_argument("--segments", required=True, help="AudioSet segments CSV")
    ap.add_argument("--out", required=True, help="output HDF5 file")
    ap.add_argument(
        "--labels",
        default=None,
        help="class_labels_indices.csv (default: the packaged AudioSet 527 classes)",
    )
    ap.add_argument("--workers", type=int, default=1, help="decoding processes")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report = pack(args.audio_dir, args.segments, args.out, args.labels, args.workers)
    summary = {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
