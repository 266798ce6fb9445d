"""The JSON record every benchmark script writes beside its printed figures: the figures, and what they were measured
on and with (git revision, package versions, machine, load average at start and end, command line, date).

A script makes a :class:`Recorder` when it starts (the start load average and date are taken then) and calls
:meth:`Recorder.write` with its figures at the end. ``add_json_option`` declares the ``--json PATH`` option.
``benchmarks/render.py`` turns records into the Markdown tables of ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

PACKAGES = ("mmsent", "torch", "transformers", "onnxruntime", "openvino", "rapidocr-onnxruntime", "scikit-learn",
            "numpy")
REQUIRED_KEYS = ("benchmark", "figures", "revision", "versions", "machine", "load_average", "command", "date")


def revision(folder: Path = Path(__file__).parent) -> str:
    """The short git revision of ``folder``'s checkout, with ``-dirty`` when it has uncommitted changes; '' outside
    git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=folder)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=folder).stdout.strip()
    except OSError:
        return ""
    return head.stdout.strip() + ("-dirty" if dirty else "")


def package_versions(names=PACKAGES) -> dict[str, str]:
    """Installed version of each package of ``names`` (the absent ones left out), and Python's."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform reports)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Platform, CPU model and the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": cpu_model(), "cores": cores}


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages ([] where the system has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def command_line(argv: list[str] | None = None) -> str:
    """The command as the user typed it: the script's path relative to the working folder where it lies below it."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).is_absolute():
        try:
            argv[0] = str(Path(argv[0]).relative_to(Path.cwd()))
        except ValueError:
            argv[0] = f"benchmarks/{Path(argv[0]).name}"
    return shlex.join(["python", *argv])


def add_json_option(parser, default: str | None = None) -> None:
    """``--json PATH``: where the script writes its record."""
    parser.add_argument("--json", type=Path, default=None if default is None else Path(default),
                        help="write the figures and what they were measured on as a JSON record here"
                             + (f" (default: {default})" if default else ""))


class Recorder:
    """Collects a benchmark's record: made at the start of a run, written with the figures at its end."""

    def __init__(self, benchmark: str, argv: list[str] | None = None):
        self.benchmark = benchmark
        self.command = command_line(argv)
        self.date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.load_at_start = load_average()

    def record(self, figures: dict, **extra) -> dict:
        """The record of ``figures`` (JSON-serialisable); ``extra`` keys go beside the required ones."""
        return {"benchmark": self.benchmark, "figures": figures, "revision": revision(),
                "versions": package_versions(), "machine": machine(),
                "load_average": {"start": self.load_at_start, "end": load_average()}, "command": self.command,
                "date": self.date, **extra}

    def write(self, path: Path | None, figures: dict, **extra) -> dict:
        """Write the record to ``path`` (nothing when None) and return it."""
        record = self.record(figures, **extra)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            print(f"record: {path}", file=sys.stderr)
        return record
