"""What every benchmark shares: statistics, rounds, the report and the command line.

Why the pieces look the way they do
-----------------------------------

*Honest, repeatable, like with like* (issue 3). A single run on a shared
machine is noise, so every benchmark measures its targets in **rounds that
alternate them** (A B C A B C ...): a burst of noise hurts whichever target
runs at that moment, and spreading each target over the whole run spreads
that harm evenly. Each round gives one sample list per target and metric;
the report gives, for every statistic, the **median across rounds** of that
statistic, and the JSON file keeps every sample so that any other summary
can be computed later.

*Statistics method.* ``median`` is the usual sample median (mean of the two
middle values for an even count, ``statistics.median``). ``p90`` and ``p99``
use the **nearest-rank** method: the smallest sample such that at least p %
of all samples are less than or equal to it, i.e. ``sorted[ceil(p/100*n)-1]``.
It never interpolates, so every reported percentile is a value that was
actually observed. With 200 samples p99 is the second-largest sample: read
it as "the tail", not as a precise figure.

*Ratios.* Every figure is printed as an absolute and as a ratio to a
reference target in the same run (the raw uvloop peer, or the kernel), so
that a reader compares like with like without trusting absolute numbers
from an unknown machine. For latencies a ratio above 1 is slower than the
reference; for rates (requests/s, MB/s) below 1 is slower.

Output: a Markdown table on stdout, one progress line per step on stderr,
``benchmarks/results/<name>-<timestamp>.json`` with every sample and the
machine's description, and a PNG chart next to it when matplotlib imports.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"
PACKAGES = ("netstack", "uvloop", "httptools", "pyroute2", "aiohttp", "uvicorn", "matplotlib")
TOOLS = {"ping": ["ping", "-V"], "curl": ["curl", "--version"], "wrk": ["wrk", "-v"], "nginx": ["nginx", "-v"]}


# -- statistics -------------------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: ``sorted[ceil(p/100 * n) - 1]`` (p in (0, 100])."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is outside (0, 100]")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True)
class Summary:
    """One sample list reduced to the figures the report prints."""

    count: int
    median: float
    p90: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("summary of no samples")
        return cls(
            count=len(samples),
            median=statistics.median(samples),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            minimum=min(samples),
            maximum=max(samples),
        )


@dataclasses.dataclass(frozen=True)
class AcrossRounds:
    """The median across rounds of each per-round statistic.

    ``spread`` is (largest - smallest) / median of the per-round medians: a
    quick sign of how noisy the machine was for this target.
    """

    rounds: int
    count: int
    median: float
    p90: float
    p99: float
    spread: float

    @classmethod
    def of(cls, per_round: Sequence[Sequence[float]]) -> AcrossRounds:
        summaries = [Summary.of(samples) for samples in per_round if samples]
        if not summaries:
            raise ValueError("no round has samples")
        medians = [summary.median for summary in summaries]
        middle = statistics.median(medians)
        return cls(
            rounds=len(summaries),
            count=sum(summary.count for summary in summaries),
            median=middle,
            p90=statistics.median(summary.p90 for summary in summaries),
            p99=statistics.median(summary.p99 for summary in summaries),
            spread=(max(medians) - min(medians)) / middle if middle else 0.0,
        )


# -- targets ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """Something measured: a server (or the kernel) reachable across a virtual link.

    ``topology`` is ``"tap"`` (our stack behind a tap, client in the same
    namespace) or ``"veth"`` (a kernel peer in a server namespace, client in
    another, joined by a veth pair); see ``benchmarks.topology``.
    ``launch(topology, workdir)`` starts the server inside
    ``topology.server`` and returns once it accepts work (``None`` when
    nothing needs starting: the kernel answering ping). ``unavailable()``
    says in one line why this target cannot run here, or ``None``.
    """

    name: str
    topology: str
    launch: Callable[[Any, Path], Any]
    port: int = 0
    unavailable: Callable[[], str | None] = lambda: None
    reference: bool = False

    def skip_reason(self) -> str | None:
        """The one-line reason this target is skipped, or ``None`` to run it."""
        try:
            return self.unavailable()
        except Exception as error:  # a broken probe must skip the target, not the run
            return f"availability check failed: {error}"


def alternate(rounds: int, names: Sequence[str]) -> Iterator[tuple[int, str]]:
    """``(round, name)`` in the order A B C A B C ...: targets interleaved by round."""
    for number in range(rounds):
        for name in names:
            yield number, name


# -- results and report -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    """A measured quantity: its key in the JSON file, title, unit, and direction."""

    key: str
    title: str
    unit: str
    higher_is_better: bool = False


class Results:
    """Every sample of one benchmark run, by metric, row (target) and round."""

    def __init__(self, benchmark: str, arguments: argparse.Namespace) -> None:
        self.benchmark = benchmark
        self.arguments = {key: value for key, value in vars(arguments).items() if _jsonable(value)}
        self.started = _datetime.datetime.now().astimezone()
        self.metrics: dict[str, Metric] = {}
        self.samples: dict[str, dict[str, list[list[float]]]] = {}
        self.extra: dict[str, dict[str, list[Any]]] = {}
        self.skipped: dict[str, str] = {}
        self.placement = ""
        # Other processes on the machine are the main source of noise; say how busy it was.
        self.load_average = {"start": os.getloadavg()[0], "end": None}

    def add(self, metric: Metric, row: str, samples: Sequence[float], *, extra: Any = None) -> None:
        """Record one round's samples for ``row``; ``extra`` (loss counts etc.) goes to JSON only."""
        self.metrics.setdefault(metric.key, metric)
        self.samples.setdefault(metric.key, {}).setdefault(row, []).append([float(value) for value in samples])
        if extra is not None:
            self.extra.setdefault(metric.key, {}).setdefault(row, []).append(extra)

    def skip(self, row: str, reason: str) -> None:
        self.skipped.setdefault(row, reason)
        progress(self.benchmark, f"skip {row}: {reason}")

    def summary(self, metric_key: str) -> dict[str, AcrossRounds]:
        return {row: AcrossRounds.of(rounds) for row, rounds in self.samples.get(metric_key, {}).items()
                if any(rounds)}

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "started": self.started.isoformat(timespec="seconds"),
            "arguments": self.arguments,
            "machine": describe_machine(),
            "placement": self.placement,
            "load_average_1min": self.load_average,
            "statistics": "median: sample median; p90/p99: nearest rank; report: median across rounds",
            "metrics": {key: dataclasses.asdict(metric) for key, metric in self.metrics.items()},
            "samples": self.samples,
            "extra": self.extra,
            "summary": {key: {row: dataclasses.asdict(value) for row, value in self.summary(key).items()}
                        for key in self.metrics},
            "skipped": self.skipped,
        }

    def write(self, directory: Path = RESULTS_DIRECTORY, *, chart: bool = True) -> Path:
        """Write the JSON file (and the chart when asked and possible); returns the JSON path."""
        directory.mkdir(parents=True, exist_ok=True)
        stamp = self.started.strftime("%Y%m%d-%H%M%S")
        path = directory / f"{self.benchmark}-{stamp}.json"
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        if chart:
            drawn = draw_chart(self, path.with_suffix(".png"))
            if drawn is not None:
                progress(self.benchmark, f"chart: {drawn}")
        return path


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def format_number(value: float) -> str:
    """Three significant figures at most, without scientific notation."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, 2 - magnitude)
    return f"{value:,.{decimals}f}"


def format_cell(value: float | None, reference: float | None) -> str:
    """``value (ratio×)``; the ratio is omitted without a usable reference."""
    if value is None:
        return "–"
    if reference is None or reference == 0:
        return format_number(value)
    return f"{format_number(value)} ({value / reference:.2f}×)"


def markdown_table(
    title: str,
    columns: Sequence[str],
    rows: dict[str, Sequence[float | None]],
    *,
    reference: str | None,
    notes: Sequence[str] = (),
) -> str:
    """A Markdown table of ``rows`` (name -> one value per column), ratios to ``reference``."""
    reference_values = rows.get(reference) if reference is not None else None
    lines = [f"### {title}", ""]
    lines.append("| target | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for name, values in rows.items():
        cells = []
        for index, value in enumerate(values):
            base = reference_values[index] if reference_values is not None and index < len(reference_values) else None
            cells.append(format_cell(value, base))
        marker = " (reference)" if name == reference else ""
        lines.append(f"| {name}{marker} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")  # a blank line, so that no Markdown renderer reads the notes as a table row
    lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"


def distribution_table(results: Results, metric: Metric, *, reference: str | None, notes: Sequence[str] = ()) -> str:
    """The standard table of a sampled metric: median, p90, p99, samples and spread."""
    summary = results.summary(metric.key)
    rows: dict[str, Sequence[float | None]] = {
        row: [value.median, value.p90, value.p99] for row, value in summary.items()
    }
    unit = metric.unit
    columns = [f"median {unit}", f"p90 {unit}", f"p99 {unit}"]
    table = markdown_table(metric.title, columns, rows, reference=reference if reference in rows else None)
    counts = [f"{row}: {value.count} samples in {value.rounds} rounds, round medians within ±{value.spread * 50:.0f} %"
              for row, value in summary.items()]
    return table + "\n" + "".join(f"- {line}\n" for line in [*counts, *notes])


def pair_note(results: Results, metric: Metric, row: str, base: str, *,
              statistics_: Sequence[str] = ("median",)) -> str | None:
    """``row`` against ``base`` in this run (e.g. hvt against unix): each statistic's ratio, or ``None``.

    The tables' ratios are to the run's reference; this is the direct
    comparison of two rows of the same run, for figures like "within 1.5×
    of the unix target".
    """
    summary = results.summary(metric.key)
    if row not in summary or base not in summary:
        return None
    parts = []
    for name in statistics_:
        value, reference = getattr(summary[row], name), getattr(summary[base], name)
        if reference:
            parts.append(f"{name} {format_number(value)} / {format_number(reference)} = {value / reference:.2f}×")
    return f"{row} against {base}, same run: " + ", ".join(parts) if parts else None


def skipped_lines(results: Results) -> str:
    return "".join(f"- skipped {row}: {reason}\n" for row, reason in results.skipped.items())


def report(results: Results, tables: Sequence[str], arguments: argparse.Namespace, *, placement: str = "") -> None:
    """Print the Markdown report on stdout and write the JSON file (and chart)."""
    machine = describe_machine()
    results.placement = placement
    results.load_average["end"] = os.getloadavg()[0]
    print(f"## benchmarks.{results.benchmark}, {results.started:%Y-%m-%d %H:%M}"
          f"{' (--quick)' if getattr(arguments, 'quick', False) else ''}\n")
    print(f"Machine: {machine_line(machine)}; CPU placement: {placement or 'not pinned'}; "
          f"load average {results.load_average['start']:.2f} at start, {results.load_average['end']:.2f} at end\n")
    for table in tables:
        print(table)
    skipped = skipped_lines(results)
    if skipped:
        print(skipped)
    path = results.write(arguments.results, chart=not arguments.no_chart)
    print(f"Samples: {path}")


# -- the machine ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def describe_machine() -> dict[str, Any]:
    """CPU, cores, kernel, Python, package and tool versions: what the figures depend on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    tools = {}
    for name, command in TOOLS.items():
        if shutil.which(command[0]) is None:
            tools[name] = None
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(command, capture_output=True, text=True, timeout=5)
            tools[name] = (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "packages": packages,
        "tools": tools,
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The repository's commit (read-only ``git rev-parse``), ``+dirty`` when edited."""
    root = Path(__file__).resolve().parent.parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return None


def machine_line(machine: dict[str, Any]) -> str:
    """One line for the top of the report."""
    return (f"{machine['cpu']}, {machine['cores_usable']}/{machine['cores']} cores, Linux {machine['kernel']}, "
            f"Python {machine['python']}, uvloop {machine['packages'].get('uvloop')}, "
            f"commit {machine.get('commit')}")


# -- progress, chart, command line ------------------------------------------------------

_START = time.monotonic()


def progress(benchmark: str, message: str) -> None:
    """One line per step on stderr, with the elapsed time, so a long run shows where it is."""
    print(f"[{benchmark} {time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def draw_chart(results: Results, path: Path) -> Path | None:
    """Latency distribution per target (empirical CDF per metric); ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return None
    keys = [key for key, metric in results.metrics.items()
            if not metric.higher_is_better and any(len(r) > 1 for rows in results.samples[key].values() for r in rows)]
    if not keys:
        return None
    figure, axes = pyplot.subplots(len(keys), 1, figsize=(8, 3.2 * len(keys)), squeeze=False)
    for axis, key in zip(axes[:, 0], keys):
        metric = results.metrics[key]
        for row, rounds in results.samples[key].items():
            pooled = sorted(value for samples in rounds for value in samples)
            if not pooled:
                continue
            fractions = [(index + 1) / len(pooled) for index in range(len(pooled))]
            axis.step(pooled, fractions, where="post", label=row)
        axis.set_xscale("log")
        axis.set_xlabel(metric.unit)
        axis.set_ylabel("fraction ≤ x")
        axis.set_title(metric.title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def argument_parser(benchmark: str, description: str, *, rounds: int) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{benchmark}", description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute: fewer rounds and samples")
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds of alternating targets (default {rounds}, --quick 2)")
    parser.add_argument("--only", action="append", metavar="TEXT", help="run only targets whose name contains TEXT")
    parser.add_argument("--results", type=Path, default=RESULTS_DIRECTORY, help="directory for the JSON file and chart")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--cpus", choices=["auto", "split", "same", "any"], default="auto",
                        help="pin servers and clients: split CPUs (auto with 2+ CPUs), one CPU, or not at all")
    parser.set_defaults(default_rounds=rounds)
    return parser


def resolve_rounds(arguments: argparse.Namespace) -> int:
    if arguments.rounds is not None:
        if arguments.rounds < 1:
            raise SystemExit("--rounds must be at least 1")
        return arguments.rounds
    return 2 if arguments.quick else arguments.default_rounds


def selected(targets: Sequence[Target], only: Sequence[str] | None) -> list[Target]:
    if not only:
        return list(targets)
    return [target for target in targets if any(text.lower() in target.name.lower() for text in only)]


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, turned into an exception so that every ``finally`` cleans up."""


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C while the block runs."""

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    previous = {number: signal.signal(number, raise_interrupted) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main_guard(benchmark: str, run: Callable[[], int]) -> int:
    """Run a benchmark's body: refuse early without privileges, exit 130 on interruption."""
    from platforms.host.netns import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        print(f"benchmarks.{benchmark}: cannot run: {reason}", file=sys.stderr)
        return 1
    try:
        with interruptible():
            return run()
    except KeyboardInterrupt as interruption:
        print(f"benchmarks.{benchmark}: interrupted ({str(interruption) or 'Ctrl-C'}); namespaces deleted",
              file=sys.stderr)
        return 130
