"""Cut the small Philly excerpt shipped in bench/traces from the shared job-windows trace.

    .venv/bin/python bench/traces/cut_philly.py [../shared/traces/philly-2017-job-windows.csv.gz]

Keeps every job whose position in job-id order is a multiple of ``EVERY`` (all of its GPU rows,
unchanged), so the excerpt has the same mix of running and ended jobs as the whole. The data is
Microsoft's Philly trace (CC BY 4.0); see README.md here for the credit.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from pathlib import Path

EVERY = 20
HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[1].parent / "shared" / "traces" / "philly-2017-job-windows.csv.gz"
OUT = HERE / "philly-2017-job-windows-excerpt.csv.gz"


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else DEFAULT
    with gzip.open(source, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    jobs = sorted({row[0] for row in rows})
    kept = {job for index, job in enumerate(jobs) if index % EVERY == 0}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(row for row in rows if row[0] in kept)
    # mtime=0: the same input gives the same bytes, so the file only changes when the data does.
    with OUT.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
        packed.write(buffer.getvalue().encode())
    print(f"{OUT.name}: {len(kept)} of {len(jobs)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
