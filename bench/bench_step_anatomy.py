"""Where a durable step's pages and bytes go: statecraft's 20-step counter next to the floor, by B-tree (issue #11).

bench_compare.py says *how much* a step costs; this says *what it writes*.
At ``synchronous=FULL`` in WAL mode a commit appends every page it changed
to the WAL (4 KiB each, checksummed) and fsyncs; on a fast disk the copying
and the syscalls, not the fsync, are most of a step's disk-side CPU. So the
number of pages a commit dirties, and which table or index dirtied them,
is the anatomy of the gap to the floor.

For each contender (bench_compare's ``Floor`` and ``Statecraft``, the same
20-step counter, in one directory):

1. ``--warm`` runs first (the B-trees reach a realistic depth and fill);
2. the WAL is truncated, one more 20-step run is made, and every WAL frame's
   page number is read from the file (the frame header's first 4 bytes) and
   attributed to its table or index through SQLite's ``dbstat`` table;
   printed as pages per commit, by B-tree;
3. the whole database's bytes per step, by B-tree (``dbstat``: pages, and
   the payload they hold), over every step written.

Usage::

    python bench/bench_step_anatomy.py                   # temp dir on the real disk
    python bench/bench_step_anatomy.py --dir /dev/shm --warm 200

Needs an SQLite compiled with ``dbstat`` (the CPython wheels' is); the
figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_compare as bc

_FRAME_HEADER = 24  # WAL frame header: page number, commit size, salts, checksums
_WAL_HEADER = 32


def _btree_of_page(path: Path) -> tuple[dict[int, str], dict[str, tuple[int, int]], int]:
    """Page number -> B-tree name; B-tree -> (bytes in pages, payload bytes); page size."""
    conn = sqlite3.connect(path)
    try:
        owner = {pageno: name for pageno, name in conn.execute("SELECT pageno, name FROM dbstat")}
        sizes = {
            name: (int(pages), int(payload))
            for name, pages, payload in conn.execute("SELECT name, SUM(pgsize), SUM(payload) FROM dbstat GROUP BY name")
        }
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        # An index SQLite made for a UNIQUE or PRIMARY KEY constraint gets its columns in its name.
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        auto = {
            index: f"{index} ({', '.join(c for _, _, c in conn.execute(f'PRAGMA index_info({index!r})'))})"
            for table in tables
            for _, index, *_ in conn.execute(f"PRAGMA index_list({table!r})")
            if index.startswith("sqlite_autoindex_")
        }
    finally:
        conn.close()
    owner = {page: auto.get(name, name) for page, name in owner.items()}
    sizes = {auto.get(name, name): v for name, v in sizes.items()}
    return owner, sizes, page_size


def page_size_of(path: Path) -> int:
    """The database's page size in bytes."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def wal_frames(path: Path, page_size: int) -> list[tuple[int, bool]]:
    """``(page number, ends a commit)`` of every frame in ``path``'s WAL, in order."""
    wal = Path(f"{path}-wal")
    data = wal.read_bytes() if wal.exists() else b""
    frames = []
    for off in range(_WAL_HEADER, len(data) - _FRAME_HEADER + 1, _FRAME_HEADER + page_size):
        page, commit_size = struct.unpack(">II", data[off:off + 8])
        frames.append((page, commit_size != 0))
    return frames


def anatomy(contender: Any, warm: int) -> dict[str, Any]:
    """Pages per commit and bytes per step, by B-tree, for one contender (closed afterwards)."""
    for _ in range(warm):
        contender.run_one()
    bc.disk_bytes(contender.path)  # a TRUNCATE checkpoint: the WAL starts empty
    contender.run_one()
    owner, sizes, page_size = _btree_of_page(contender.path)  # read through the WAL
    frames = wal_frames(contender.path, page_size)  # before close() checkpoints it away
    contender.close()
    commits = sum(1 for _, ends in frames if ends) or 1
    by_tree = collections.Counter(owner.get(page, "(freelist or new)") for page, _ in frames)
    return {
        "commits": commits,
        "pages_per_commit": len(frames) / commits,
        "pages_per_commit_by_btree": {name: n / commits for name, n in by_tree.most_common()},
        "bytes_per_step_by_btree": {
            name: (pages / contender.steps_written, payload / contender.steps_written)
            for name, (pages, payload) in sorted(sizes.items(), key=lambda kv: -kv[1][0])
        },
        "steps": contender.steps_written,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="directory for the database files (default: a new temp dir)")
    parser.add_argument("--warm", type=int, default=100, help="20-step runs before the measured one (default 100)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="statecraft-anatomy-") as tmp:
        for make in (bc.Floor, bc.Statecraft):
            contender = make(Path(tmp) / f"{make.name}.db", "FULL")
            result = anatomy(contender, args.warm)
            print(f"\n{contender.name}: {result['pages_per_commit']:.1f} WAL pages per commit "
                  f"({result['commits']} commits of one 20-step run, after {args.warm} runs)")
            for name, pages in result["pages_per_commit_by_btree"].items():
                print(f"  {name:48s} {pages:5.2f} pages/commit")
            total = sum(p for p, _ in result["bytes_per_step_by_btree"].values())
            print(f"  bytes per step over {result['steps']:,} steps: {total:,.0f} in pages "
                  "(B-trees of one page not shown)")
            for name, (pages, payload) in result["bytes_per_step_by_btree"].items():
                if pages * result["steps"] > page_size_of(contender.path):
                    print(f"  {name:48s} {pages:7.1f} B/step in pages, {payload:7.1f} of payload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
