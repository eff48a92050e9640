"""Fuzzing campaign runner: every target of ``bench/fuzz_targets.py`` on N generated inputs.

    .venv/bin/python bench/fuzz.py                                  # every target, 100,000 inputs each
    .venv/bin/python bench/fuzz.py --target http2 --inputs 1000000 --seconds 3600 --jobs 2
    .venv/bin/python bench/fuzz.py --engine mutate                  # without atheris
    .venv/bin/python bench/fuzz.py --write-seeds                    # regenerate bench/fuzz_corpus/

Engines: ``atheris`` (libFuzzer, coverage-guided: the code under test and h2/hpack/hyperframe/httptools'
Python are instrumented; new coverage inputs go to a scratch corpus, never the committed one) when it
is installed (``pip install -e '.[dev]'``), else ``mutate``: random mutation (bit flips, byte
changes, inserts, deletions, duplicated ranges, splices, boundary values) of the seed corpus in
``bench/fuzz_corpus/<target>/``, seeded so a run repeats. Each target runs in its own process (at most
``--jobs`` at once, ``nice``d), stops after ``--inputs`` inputs or ``--seconds``, and never stops at a
crash: every distinct crash (exception type and the line it came from) is saved with its input under
``--out`` (``crash-<target>-<hash>.bin`` and ``.txt`` with the traceback). Printed per target: inputs
tried, crashes found, the files, time taken. Reproduce one: ``--replay FILE --target NAME``.
Exit status 1 when any target crashed. Never part of the test run (``tests/unit/fuzz`` is).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CORPUS = BENCH / "fuzz_corpus"
MAX_LEN = 4096  # generated inputs; seeds stay below it too
TARGET_NAMES = ("hbone_bytes", "hbone_frames", "zds", "xds", "cni", "yaml", "http1", "http2")
# Instrumented for coverage under atheris (third-party parsers our code drives included).
_INSTRUMENTED = ("meshcore", "ztunnel", "waypoint", "h2", "hpack", "hyperframe", "yaml", "fuzz_targets")

Target = Callable[[bytes], None]


# ----------------------------------------------------------------------------------------- worker side


class Tally:
    """Inputs tried and distinct crashes of one worker; written to ``<out>/<target>.json`` as it goes."""

    def __init__(self, target: str, engine: str, out: Path) -> None:
        self.target = target
        self.engine = engine
        self.out = out
        self.inputs = 0
        self.crashes: dict[str, dict[str, object]] = {}
        self.started = time.monotonic()
        self._written_at = 0.0

    def run(self, fn: Target, data: bytes) -> None:
        self.inputs += 1
        try:
            fn(data)
        except Exception as exc:  # noqa: BLE001 - every exception a target lets out is a finding
            self._record(exc, data)
        if self.inputs & 0x3FF == 0:
            now = time.monotonic()
            if now - self._written_at > 2.0:
                self.write()

    def _record(self, exc: Exception, data: bytes) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        inner = frames[-1] if frames else None
        where = f"{Path(inner.filename).name}:{inner.lineno}" if inner else "?"
        key = f"{type(exc).__name__}@{where}"
        if key in self.crashes:
            self.crashes[key]["count"] = int(self.crashes[key]["count"]) + 1  # type: ignore[call-overload]
            return
        digest = hashlib.sha1(data).hexdigest()[:12]
        path = self.out / f"crash-{self.target}-{digest}.bin"
        path.write_bytes(data)
        text = "".join(traceback.format_exception(exc))
        path.with_suffix(".txt").write_text(f"target {self.target}, input {path.name}\n\n{text}")
        self.crashes[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "where": where,
                             "file": str(path), "count": 1}
        self.write()

    def write(self) -> None:
        self._written_at = time.monotonic()
        doc = {"target": self.target, "engine": self.engine, "inputs": self.inputs,
               "seconds": round(self._written_at - self.started, 1), "crashes": list(self.crashes.values())}
        tmp = self.out / f".{self.target}.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.out / f"{self.target}.json")


def _quiet_logs() -> None:
    """Targets log refusals (that is their job); a million log lines would measure the terminal."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.disable(logging.CRITICAL)


def _load_targets(instrument: bool) -> dict[str, Target]:
    sys.path.insert(0, str(BENCH))
    if instrument:
        import atheris

        with atheris.instrument_imports(include=list(_INSTRUMENTED)):
            import fuzz_targets
    else:
        import fuzz_targets
    return fuzz_targets.TARGETS


def seeds(target: str) -> list[bytes]:
    folder = CORPUS / target
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    return [f.read_bytes()[:MAX_LEN] for f in files if f.is_file()] or [b""]


_BOUNDARY = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\r\n",
             b"\r\n\r\n", b"\x00\x00\x04", b"\x01\x00\x00\x00\x00", b"%", b"\n")


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four random edits of ``data`` (bounded to ``MAX_LEN``)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:
            i = rng.randint(0, n)
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and n:
            i = rng.randrange(n)
            del buf[i : i + rng.randint(1, 32)]
        elif op == 4 and n:
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 64))
            k = rng.randint(0, n)
            buf[k:k] = buf[i:j] * rng.randint(1, 8)
        elif op == 5:
            other = rng.choice(pool)
            if other:
                i, j = rng.randint(0, n), rng.randrange(len(other))
                buf[i:] = other[j:]
        elif op == 6 and n:
            del buf[rng.randint(0, n - 1) :]
        elif op == 7:
            i = rng.randint(0, n)
            buf[i:i] = rng.choice(_BOUNDARY)
        elif n:
            i = rng.randrange(n)
            value = rng.choice(_BOUNDARY)
            buf[i : i + len(value)] = value
    return bytes(buf[:MAX_LEN])


def work_mutate(target: str, fn: Target, args: argparse.Namespace, tally: Tally) -> None:
    rng = random.Random(f"{args.seed}:{target}")
    pool = seeds(target)
    for data in pool:
        tally.run(fn, data)
    deadline = time.monotonic() + args.seconds
    while tally.inputs < args.inputs:
        if tally.inputs & 0xFF == 0 and time.monotonic() > deadline:
            break
        base = rng.choice(pool)
        data = rng.randbytes(rng.randrange(64)) if rng.random() < 0.02 else mutate(rng, base, pool)
        tally.run(fn, data)


def work_atheris(target: str, fn: Target, args: argparse.Namespace, tally: Tally) -> None:
    import atheris

    corpus = tally.out / f"corpus-{target}"
    corpus.mkdir(exist_ok=True)
    for i, data in enumerate(seeds(target)):
        (corpus / f"seed-{i:03d}").write_bytes(data)

    def one_input(data: bytes) -> None:
        tally.run(fn, data)
        if tally.inputs >= args.inputs:
            tally.write()

    libfuzzer = [sys.argv[0], str(corpus), f"-runs={args.inputs}", f"-max_total_time={int(args.seconds)}",
                 f"-max_len={MAX_LEN}", "-rss_limit_mb=4096", "-timeout=60", f"-seed={args.seed or 1}",
                 "-print_final_stats=1"]
    atheris.Setup(libfuzzer, one_input)
    try:
        atheris.Fuzz()  # libFuzzer exits the process when done
    finally:
        tally.write()


def worker(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _quiet_logs()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    targets = _load_targets(instrument=args.engine == "atheris")
    tally = Tally(args.worker, args.engine, out)
    if args.engine == "atheris":
        work_atheris(args.worker, targets[args.worker], args, tally)
    else:
        work_mutate(args.worker, targets[args.worker], args, tally)
    tally.write()
    return 0


# ------------------------------------------------------------------------------------------ parent side


def _engine(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "mutate"
    return "atheris"


def _run_one(target: str, args: argparse.Namespace, engine: str, out: Path) -> dict[str, object]:
    log = out / f"{target}.log"
    cmd = ["nice", "-n", str(args.nice), sys.executable, str(Path(__file__).resolve()), "--worker", target,
           "--engine", engine, "--inputs", str(args.inputs), "--seconds", str(args.seconds), "--out", str(out),
           "--seed", str(args.seed)]
    started = time.monotonic()
    with log.open("wb") as sink:
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    result_file = out / f"{target}.json"
    result: dict[str, object] = (
        json.loads(result_file.read_text()) if result_file.exists() else {"target": target, "inputs": 0, "crashes": []}
    )
    result["wall"] = round(time.monotonic() - started, 1)
    result["exit"] = proc.returncode
    return result


def _print(result: dict[str, object]) -> None:
    crashes = result.get("crashes") or []
    assert isinstance(crashes, list)
    print(f"{result['target']:<13} {result.get('engine', '?'):<8} {int(result['inputs']):>10,} inputs  "  # type: ignore[call-overload]
          f"{len(crashes):>3} crashes  {result.get('wall', result.get('seconds', 0)):>8}s"
          + ("" if result.get("exit") in (0, None) else f"  (worker exit {result.get('exit')}, see its .log)"))
    for crash in crashes:
        print(f"    {crash['error'][:150]}\n      at {crash['where']} (x{crash['count']}) input {crash['file']}")
    sys.stdout.flush()


def replay(path: str, target: str) -> int:
    _quiet_logs()
    targets = _load_targets(instrument=False)
    targets[target](Path(path).read_bytes())
    print(f"{path}: no crash")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", choices=TARGET_NAMES, help="(repeatable; default: all)")
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seconds", type=float, default=3600.0, help="time limit per target")
    parser.add_argument("--jobs", type=int, default=2, help="targets run at once (one process each)")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--out", default="/tmp/ambient-fuzz", help="crash files, logs, per-target JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--write-seeds", action="store_true", help="regenerate bench/fuzz_corpus/ and exit")
    parser.add_argument("--replay", metavar="FILE", help="run one input through --target and show what happens")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.write_seeds:
        sys.path.insert(0, str(BENCH))
        from fuzz_targets import seed_inputs

        for name, inputs in seed_inputs().items():
            folder = CORPUS / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("seed-*"):
                old.unlink()
            for i, data in enumerate(inputs):
                (folder / f"seed-{i:03d}").write_bytes(data)
            print(f"{name}: {len(inputs)} seeds, {sum(map(len, inputs)):,} bytes")
        return 0
    if args.replay:
        if not args.target or len(args.target) != 1:
            parser.error("--replay needs exactly one --target")
        return replay(args.replay, args.target[0])
    targets = args.target or list(TARGET_NAMES)
    engine = _engine(args.engine)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        stale.unlink()
    print(f"# {platform.node()} {platform.machine()} Python {platform.python_version()} {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {' '.join(sys.argv)}  (engine {engine}, {args.jobs} jobs, out {out})")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda t: _run_one(t, args, engine, out), targets))
    for result in results:
        _print(result)
    total = sum(len(r.get("crashes") or []) for r in results)  # type: ignore[arg-type]
    print(f"# total: {sum(int(r['inputs']) for r in results):,} inputs, {total} distinct crashes, "  # type: ignore[call-overload]
          f"{time.monotonic() - started:.0f}s wall")
    return 1 if total else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
