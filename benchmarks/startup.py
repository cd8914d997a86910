"""Start-up of the ``mneme`` command, before and after issue 19; prints a Markdown table.

Run ``python -m benchmarks.startup`` (``--repeats 3`` for a quick run). Each command runs as a
new process, ``--repeats`` times, and the table gives the median wall-clock seconds:

- ``doc list``, ``doc delete`` of a missing collection, ``db status`` and ``keys list`` on a
  fresh ``MNEME_HOME`` (the database already created, nothing else);
- ``doc search`` of a small document ingested (fixed segmenter) into a second fresh home.

*Before* is the code at ``--baseline`` (default: the commit before the one that added this file,
or ``HEAD`` while it is uncommitted), unpacked with ``git archive`` into a temporary folder and
run with this same Python environment; *after* is this working tree. The two alternate run by
run, so a change in the machine's load falls on both. Each command also runs once untimed on
each side first (the file cache).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = (
    "# A small book\n\n"
    + "The keeper of the lighthouse played chess with the harbour master every night. " * 20
    + "\n\nA storm came and the lamp went out; the ships waited beyond the rocks till dawn. " * 20
    + "\n"
)


@dataclass(frozen=True, slots=True)
class Command:
    label: str
    args: tuple[str, ...]
    home: str  # "empty" or "library"
    exit_code: int = 0


COMMANDS = (
    Command("doc list", ("doc", "list"), "empty"),
    Command("doc delete (missing)", ("doc", "delete", "missing"), "empty", exit_code=2),
    Command("db status", ("db", "status"), "empty"),
    Command("keys list", ("keys", "list"), "empty"),
    Command("doc search", ("doc", "search", "books", "Who played chess?"), "library"),
)


@dataclass(frozen=True, slots=True)
class Tree:
    """A source tree to run ``mneme`` from, and its two homes."""

    name: str
    root: Path
    homes: dict[str, Path]


def baseline_revision() -> str:
    """The commit before the one that added this file; ``HEAD`` while it is not committed."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "-n1", "--", "benchmarks/startup.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{added}^" if added else "HEAD"


def unpack(revision: str, folder: Path) -> Path:
    """The tracked files of ``revision`` in ``folder`` (no worktree: .git is left alone)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def mneme(tree: Tree, args: tuple[str, ...], home: Path) -> tuple[float, int, str]:
    """Run ``mneme ARGS`` from ``tree``'s sources: seconds, exit code, stderr."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    environment["MNEME_HOME"] = str(home)
    # ``-c`` puts the working directory first on sys.path: ``tree``'s packages are the ones
    # imported, ahead of the editable install of this checkout.
    command = [sys.executable, "-c", "from app.cli import main; main()", *args]
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=tree.root, env=environment, capture_output=True, text=True, check=False
    )
    return time.perf_counter() - start, done.returncode, done.stderr


def checked(tree: Tree, args: tuple[str, ...], home: Path, exit_code: int = 0) -> float:
    seconds, code, stderr = mneme(tree, args, home)
    if code != exit_code:
        raise SystemExit(f"{tree.name}: mneme {' '.join(args)} exited {code}: {stderr.strip()}")
    return seconds


def prepare(name: str, root: Path, folder: Path) -> Tree:
    """A tree with an initialised empty home and a home holding one small document."""
    tree = Tree(name, root, {"empty": folder / "empty", "library": folder / "library"})
    checked(tree, ("db", "upgrade"), tree.homes["empty"])
    book = folder / "book.md"
    book.write_text(BOOK, encoding="utf-8")
    ingest = ("doc", "ingest", str(book), "-c", "books", "--segmenter", "fixed")
    checked(tree, ingest, tree.homes["library"])
    return tree


def measure(trees: list[Tree], repeats: int) -> dict[tuple[str, str], list[float]]:
    """Seconds of each (tree, command), run by run alternating the trees."""
    seconds: dict[tuple[str, str], list[float]] = {}
    for command in COMMANDS:
        for tree in trees:  # warm the file cache
            checked(tree, command.args, tree.homes[command.home], command.exit_code)
        for _ in range(repeats):
            for tree in trees:
                taken = checked(tree, command.args, tree.homes[command.home], command.exit_code)
                seconds.setdefault((tree.name, command.label), []).append(taken)
    return seconds


def table(seconds: dict[tuple[str, str], list[float]], repeats: int) -> str:
    lines = [
        f"| command | before (s, median of {repeats}) | after (s) | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for command in COMMANDS:
        before = statistics.median(seconds["before", command.label])
        after = statistics.median(seconds["after", command.label])
        lines.append(
            f"| `mneme {command.label}` | {before:.2f} | {after:.2f} | {before / after:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each command")
    parser.add_argument("--baseline", default=None, help="git revision of 'before'")
    options = parser.parse_args()
    revision = options.baseline or baseline_revision()
    with tempfile.TemporaryDirectory(prefix="mneme-startup-") as scratch:
        folder = Path(scratch)
        before = prepare("before", unpack(revision, folder / "before"), folder / "before-homes")
        after = prepare("after", ROOT, folder / "after-homes")
        seconds = measure([before, after], options.repeats)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"## mneme start-up: before = {revision} ({commit}), after = this working tree\n")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {load}; new process per run\n"
    )
    print(table(seconds, options.repeats))


if __name__ == "__main__":
    main()
