"""Cut the small Philly excerpts shipped in bench/traces from the shared traces.

    .venv/bin/python bench/traces/cut_philly.py [DIRECTORY]   # default: ../shared/traces

- job windows: every job whose position in job-id order is a multiple of ``EVERY_JOB`` (all of
  its GPU rows, unchanged), so the excerpt has the same mix of running and ended jobs as the
  whole;
- GPU minutes: every machine whose position in machine-id order is a multiple of
  ``EVERY_MACHINE`` (all of its rows, unchanged).

The data is Microsoft's Philly trace (CC BY 4.0); see README.md here for the credit. The tests
read these excerpts, so a clone needs nothing beside it.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from pathlib import Path

EVERY_JOB = 20
EVERY_MACHINE = 40
HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[1].parent / "shared" / "traces"
# source name → (excerpt name, the column that groups rows, keep every Nth group)
CUTS = {
    "philly-2017-job-windows.csv.gz": ("philly-2017-job-windows-excerpt.csv.gz", 0, EVERY_JOB),
    "philly-2017-gpu-minutes.csv.gz": ("philly-2017-gpu-minutes-excerpt.csv.gz", 0, EVERY_MACHINE),
}


def cut(source: Path, out: Path, column: int, every: int) -> str:
    with gzip.open(source, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    groups = sorted({row[column] for row in rows})
    kept = {group for index, group in enumerate(groups) if index % every == 0}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    selected = [row for row in rows if row[column] in kept]
    writer.writerows(selected)
    # mtime=0: the same input gives the same bytes, so the file only changes when the data does.
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        packed.write(buffer.getvalue().encode())
    return f"{out.name}: {len(kept)} of {len(groups)} {header[column]}s, {len(selected):,} rows"


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else DEFAULT
    for name, (excerpt, column, every) in CUTS.items():
        print(cut(directory / name, HERE / excerpt, column, every))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
