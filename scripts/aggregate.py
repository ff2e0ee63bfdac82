"""Aggregate the results.json of Table-1 runs into a markdown table (mean ± std over seeds).

Usage: python scripts/aggregate.py multirun/ outputs/ [--out docs/table1.md] [--json summary.json]
"""

import sys

from dcls_audio.train.aggregate import main

if __name__ == "__main__":
    sys.exit(main())
