"""Fuzzing campaign runner: every target of ``bench/fuzz_targets.py`` on N generated inputs.

    .venv/bin/python bench/fuzz.py                                  # every target, 100,000 inputs each
    .venv/bin/python bench/fuzz.py --inputs 1000000 --explore 180   # the recorded campaign (docs/benchmarks.md)
    .venv/bin/python bench/fuzz.py --target http2 --inputs 50000 --engine mutate   # without atheris
    .venv/bin/python bench/fuzz.py --replay /tmp/ambient-fuzz/crash-http2-....bin --target http2
    .venv/bin/python bench/fuzz.py --write-seeds                    # regenerate bench/fuzz_corpus/

Engines. ``mutate``: seeded random mutation (bit flips, byte changes, inserts, deletions, duplicated
ranges, splices between corpus inputs, boundary values) of the corpus, uninstrumented, so it runs at the
targets' own speed. ``atheris`` (the default when it is installed: ``pip install -e '.[dev]'``): first
``--explore`` seconds of coverage-guided fuzzing with libFuzzer over our packages' instrumented Python
(the corpus it grows goes to ``--out``, never to the committed one), then ``mutate`` over the seeds plus
that corpus for the rest of the inputs (instrumentation costs 5-20x per input: a million HTTP/2 inputs
fully instrumented would take hours on two cores). Seeds: ``bench/fuzz_corpus/<target>/``.

Each target runs in its own processes (at most ``--jobs`` targets at once, ``nice``d) until ``--inputs``
inputs or ``--seconds``; it never stops at a crash: every distinct crash (exception type and the line it
came from) is saved with its input under ``--out`` (``crash-<target>-<hash>.bin``, and ``.txt`` with the
traceback), and so is any input that took longer than ``--slow`` seconds (``slow-...``). Printed per
target: inputs tried, crashes, slow inputs, the files, time taken. Exit status 1 when anything crashed.
Never part of the test run (``tests/unit/fuzz`` is).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
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
MAX_LEN = 1024  # generated inputs (a frame program of this size is ~96 frames); seeds are smaller
TARGET_NAMES = ("hbone_bytes", "hbone_frames", "zds", "xds", "cni", "yaml", "http1", "http2")
# Instrumented for coverage under atheris: our packages only (instrumenting h2/hpack/hyperframe too made
# the HTTP/2 targets another ~10x slower).
_INSTRUMENTED = ("meshcore", "ztunnel", "waypoint", "fuzz_targets")

Target = Callable[[bytes], None]


# ----------------------------------------------------------------------------------------- worker side


class Tally:
    """Inputs tried, distinct crashes and slow inputs of one worker, in ``<out>/<target>.<engine>.json``."""

    def __init__(self, target: str, engine: str, out: Path, slow: float) -> None:
        self.target = target
        self.engine = engine
        self.out = out
        self.slow = slow
        self.inputs = 0
        self.crashes: dict[str, dict[str, object]] = {}
        self.slow_inputs: list[dict[str, object]] = []
        self.started = time.monotonic()
        self._written_at = 0.0

    def run(self, fn: Target, data: bytes) -> None:
        self.inputs += 1
        started = time.perf_counter()
        try:
            fn(data)
        except Exception as exc:  # noqa: BLE001 - every exception a target lets out is a finding
            self._record(exc, data)
        took = time.perf_counter() - started
        if took > self.slow and len(self.slow_inputs) < 20:
            path = self._save("slow", data)
            self.slow_inputs.append({"seconds": round(took, 2), "file": str(path), "length": len(data)})
            self.write()
        if self.inputs & 0x3FF == 0 and time.monotonic() - self._written_at > 2.0:
            self.write()

    def _save(self, kind: str, data: bytes) -> Path:
        path = self.out / f"{kind}-{self.target}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
        path.write_bytes(data)
        return path

    def _record(self, exc: Exception, data: bytes) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        if len(frames) > 1 and frames[-1].name == "check":  # a broken invariant: where it was checked
            frames = frames[:-1]
        inner = frames[-1] if frames else None
        where = f"{Path(inner.filename).name}:{inner.lineno}" if inner else "?"
        key = f"{type(exc).__name__}@{where}"
        if key in self.crashes:
            self.crashes[key]["count"] = int(self.crashes[key]["count"]) + 1  # type: ignore[call-overload]
            return
        path = self._save("crash", data)
        text = "".join(traceback.format_exception(exc))
        path.with_suffix(".txt").write_text(f"target {self.target}, input {path.name}\n\n{text}")
        self.crashes[key] = {"key": key, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "where": where,
                             "file": str(path), "count": 1}
        self.write()

    def write(self) -> None:
        self._written_at = time.monotonic()
        doc = {"target": self.target, "engine": self.engine, "inputs": self.inputs,
               "seconds": round(self._written_at - self.started, 1), "crashes": list(self.crashes.values()),
               "slow": self.slow_inputs}
        tmp = self.out / f".{self.target}.{self.engine}.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.out / f"{self.target}.{self.engine}.json")


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


def corpus_inputs(*folders: Path) -> list[bytes]:
    files = [f for folder in folders if folder.is_dir() for f in sorted(folder.iterdir()) if f.is_file()]
    return [f.read_bytes()[:MAX_LEN] for f in files] or [b""]


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
    pool = corpus_inputs(CORPUS / target, *(Path(p) for p in args.corpus or ()))
    for data in pool[: args.inputs]:
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
    for i, data in enumerate(corpus_inputs(CORPUS / target)):
        (corpus / f"seed-{i:03d}").write_bytes(data)

    def one_input(data: bytes) -> None:
        tally.run(fn, data)
        if tally.inputs >= args.inputs:
            tally.write()

    libfuzzer = [sys.argv[0], str(corpus), f"-runs={args.inputs}", f"-max_total_time={max(1, int(args.seconds))}",
                 f"-max_len={MAX_LEN}", "-rss_limit_mb=4096", "-timeout=120", f"-seed={args.seed or 1}",
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
    targets = _load_targets(instrument=args.engine == "atheris")
    tally = Tally(args.worker, args.engine, out, args.slow)
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


def _phase(target: str, engine: str, inputs: int, seconds: float, args: argparse.Namespace, out: Path,
           corpus: list[Path]) -> dict[str, object]:
    log = out / f"{target}.{engine}.log"
    cmd = ["nice", "-n", str(args.nice), sys.executable, str(Path(__file__).resolve()), "--worker", target,
           "--engine", engine, "--inputs", str(inputs), "--seconds", str(seconds), "--out", str(out),
           "--seed", str(args.seed), "--slow", str(args.slow)]
    for folder in corpus:
        cmd += ["--corpus", str(folder)]
    with log.open("wb") as sink:
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    result_file = out / f"{target}.{engine}.json"
    result: dict[str, object] = (
        json.loads(result_file.read_text()) if result_file.exists()
        else {"target": target, "engine": engine, "inputs": 0, "crashes": [], "slow": []}
    )
    # libFuzzer stops at -max_total_time without calling us: its own count is the exact one.
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            result["inputs"] = max(int(result["inputs"]), int(line.split(":")[-1]))  # type: ignore[call-overload]
    result["exit"] = proc.returncode
    return result


def _run_one(target: str, args: argparse.Namespace, engine: str, out: Path) -> dict[str, object]:
    started = time.monotonic()
    phases = []
    if engine == "atheris":
        explore = min(args.explore, args.seconds)
        phases.append(_phase(target, "atheris", args.inputs, explore, args, out, []))
    done = sum(int(p["inputs"]) for p in phases)  # type: ignore[call-overload]
    left_seconds = args.seconds - (time.monotonic() - started)
    if done < args.inputs and left_seconds > 0:
        grown = [out / f"corpus-{target}"] if phases else []
        phases.append(_phase(target, "mutate", args.inputs - done, left_seconds, args, out, grown))
    crashes: dict[str, dict[str, object]] = {}
    for phase in phases:
        for crash in phase["crashes"]:  # type: ignore[attr-defined]
            key = crash.get("key") or crash["where"]
            if key in crashes:
                crashes[key]["count"] = int(crashes[key]["count"]) + int(crash["count"])
            else:
                crashes[key] = dict(crash)
    return {
        "target": target,
        "engine": "+".join(f"{p['engine']} {int(p['inputs']):,}" for p in phases),  # type: ignore[call-overload]
        "inputs": sum(int(p["inputs"]) for p in phases),  # type: ignore[call-overload]
        "crashes": list(crashes.values()),
        "slow": [s for p in phases for s in p.get("slow") or []],  # type: ignore[attr-defined]
        "exit": max(int(p["exit"]) for p in phases) if phases else 0,  # type: ignore[call-overload]
        "wall": round(time.monotonic() - started, 1),
    }


def _print(result: dict[str, object]) -> None:
    crashes = result["crashes"]
    slow = result["slow"]
    assert isinstance(crashes, list) and isinstance(slow, list)
    note = "" if result.get("exit") == 0 else f"  (a worker exited {result.get('exit')}: see its .log)"
    print(f"{result['target']:<13} {int(result['inputs']):>10,} inputs  {len(crashes):>2} crashes  "  # type: ignore[call-overload]
          f"{len(slow):>2} slow  {result['wall']:>7}s  [{result['engine']}]{note}")
    for crash in crashes:
        print(f"    {crash['error'][:150]}\n      at {crash['where']} (x{crash['count']}) input {crash['file']}")
    for item in slow[:5]:
        print(f"    slow: {item['seconds']}s for {item['length']} bytes: {item['file']}")
    sys.stdout.flush()


def replay(path: str, target: str) -> int:
    _quiet_logs()
    targets = _load_targets(instrument=False)
    started = time.perf_counter()
    targets[target](Path(path).read_bytes())
    print(f"{path}: no crash ({time.perf_counter() - started:.3f}s)")
    return 0


def write_seeds() -> None:
    sys.path.insert(0, str(BENCH))
    from fuzz_targets import seed_inputs

    for name, inputs in seed_inputs().items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for i, data in enumerate(inputs):
            assert len(data) <= MAX_LEN, f"{name} seed {i} is {len(data)} bytes"
            (folder / f"seed-{i:03d}").write_bytes(data)
        print(f"{name}: {len(inputs)} seeds, {sum(map(len, inputs)):,} bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", choices=TARGET_NAMES, help="(repeatable; default: all)")
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seconds", type=float, default=4 * 3600.0, help="time limit per target")
    parser.add_argument("--explore", type=float, default=120.0, help="seconds of coverage-guided atheris first")
    parser.add_argument("--jobs", type=int, default=2, help="targets run at once (one process each)")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument("--out", default="/tmp/ambient-fuzz", help="crash files, logs, per-target JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--slow", type=float, default=2.0, help="an input taking longer is saved as slow")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--write-seeds", action="store_true", help="regenerate bench/fuzz_corpus/ and exit")
    parser.add_argument("--replay", metavar="FILE", help="run one input through --target and show what happens")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.write_seeds:
        write_seeds()
        return 0
    if args.replay:
        if not args.target or len(args.target) != 1:
            parser.error("--replay needs exactly one --target")
        return replay(args.replay, args.target[0])
    targets = args.target or list(TARGET_NAMES)
    engine = _engine(args.engine)
    out = Path(args.out)
    for stale in (*out.glob("*.json"), *out.glob("corpus-*")):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {' '.join(sys.argv)}  (engine {engine}, {args.jobs} jobs, out {out})")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda t: _run_one(t, args, engine, out), targets))
    for result in results:
        _print(result)
    total = sum(len(r["crashes"]) for r in results)  # type: ignore[arg-type]
    print(f"# total: {sum(int(r['inputs']) for r in results):,} inputs, {total} distinct crashes, "  # type: ignore[call-overload]
          f"{sum(len(r['slow']) for r in results)} slow inputs, {time.monotonic() - started:.0f}s wall")  # type: ignore[arg-type]
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
