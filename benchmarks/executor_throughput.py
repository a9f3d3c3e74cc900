"""E1: how many model-written programs the sandboxed executor checks per second.

Workload: ``--jobs`` small AZR-style programs (list/string/dict transforms, a few with safe
imports, ~10 % raising an exception), each with its own input. Measured, each ``--repeats``
times (median reported):

- ``run_many`` (the fork server: one confined child process per program) at several worker counts;
- ``validate_many`` (a task = two runs, hash seeds 0 and 1, both servers at once);
- ``run_program`` one call at a time (latency of a single check);
- baseline: a fresh confined ``python`` per program (``run_spawned`` below: the same confinement
  and verdict code, no fork server), ``--spawn-jobs`` programs, as many at a time as the fork
  server's default workers.

Server start-up is excluded (started before timing); it is reported separately. CPU per program
counts every process involved (trainer, servers, children), so it hardly depends on other load on
the machine; programs/s does.

    python benchmarks/executor_throughput.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone

from azr_trainer import executor as ex
from azr_trainer.sandbox.pool import BOOT, SRC_DIR
from azr_trainer.sandbox.protocol import _checked
from azr_trainer.sandbox.server import _kill_group, _verdict

TEMPLATES = [
    ("def f(x):\n    return [v * {k} + 1 for v in x if v % 2 == 0]", "list"),
    ("def f(x):\n    out, s = [], 0\n    for v in x:\n        s += v\n        out.append(s % {k})\n"
     "    return out", "list"),
    ("def f(s):\n    return ''.join(sorted(set(s)))[::-1] + str(len(s) * {k})", "str"),
    ("def f(s):\n    d = {{}}\n    for c in s:\n        d[c] = d.get(c, 0) + {k}\n    return sorted(d.items())", "str"),
    ("import math\ndef f(x):\n    return [math.gcd(v, {k}) for v in x] + [math.isqrt(abs(sum(x)))]", "list"),
    ("from collections import Counter\ndef f(s):\n    return Counter(s).most_common({k})", "str"),
    ("def f(x, n):\n    x = sorted(x)\n    return x[n % len(x)] * {k} if x else 0", "list_int"),
    ("def f(x):\n    return x[{k}] // (x[0] - x[0])", "list"),  # raises ZeroDivisionError/IndexError
    ("def f(n):\n    a, b = 0, 1\n    for _ in range(n * {k}):\n        a, b = b, a + b\n"
     "    return a % 1000007", "int"),
    ("def f(s):\n    words = s.split('a')\n    return {{w: len(w) * {k} for w in words if w}}", "str"),
]


def make_jobs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        code, arg = TEMPLATES[i % len(TEMPLATES)]
        code = code.format(k=rng.randint(1, 5))
        lst = [rng.randint(-20, 20) for _ in range(rng.randint(1, 12))]
        word = "".join(rng.choice("abcde") for _ in range(rng.randint(1, 20)))
        inp = {"list": repr(lst), "str": repr(word), "int": str(rng.randint(1, 30)),
               "list_int": f"{lst!r}, {rng.randint(0, 9)}"}[arg]
        jobs.append((code, inp))
    return jobs


def run_spawned(code: str, input_text: str, limits: ex.Limits = ex.Limits()) -> ex.RunResult:
    """The baseline: a fresh ``python`` per program (confined the same way) instead of the fork server."""
    early, todo, _ = ex._prepare([(code, input_text)], False)
    if not todo:
        return early[0]
    base = tempfile.mkdtemp(prefix="azr-spawn-")
    os.chmod(base, 0o711)
    p = subprocess.Popen([sys.executable, "-S", "-s", "-B", "-c", BOOT, SRC_DIR, "one", base],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env={"PYTHONHASHSEED": str(ex.SEEDS[0])}, cwd=base, start_new_session=True)
    try:
        out, _ = p.communicate(json.dumps({"job": todo[0], "limits": asdict(limits)}).encode(),
                               timeout=limits.wall_seconds + 2.0)  # + interpreter start-up
    except subprocess.TimeoutExpired:
        _kill_group(p.pid)
        p.wait()
        return ex.RunResult(ok=False, error="timeout", kind="timeout")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    st = {"buf": out, "timed_out": False, "flooded": len(out) > 8 * limits.output_chars + 4096}
    status = -p.returncode if p.returncode < 0 else p.returncode << 8  # back to a wait() status
    return _checked(_verdict(st, status, None, asdict(limits)), limits)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_seconds() -> float:
    """CPU used so far by this process, its reaped children, the sandbox servers and theirs."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for s in ex._SERVERS.values():
        if s.proc is not None and s.proc.poll() is None:
            with open(f"/proc/{s.proc.pid}/stat", "rb") as fh:
                stat = fh.read()
            fields = stat[stat.rindex(b")") + 2:].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def timed(fn, repeats: int) -> tuple[float, list[float], object, float]:
    """Median wall time, all wall times, the last result, median CPU seconds (all processes)."""
    times, cpus, out = [], [], None
    for _ in range(repeats):
        c = cpu_seconds()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(cpu_seconds() - c)
    return statistics.median(times), times, out, statistics.median(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--single", type=int, default=100, help="sequential run_program calls")
    ap.add_argument("--spawn-jobs", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    jobs = make_jobs(args.jobs)
    default_workers = ex._default_workers()

    t = time.perf_counter()
    features = ex.sandbox_features()
    startup = time.perf_counter() - t
    ex.validate_task(*jobs[0])  # starts the second-seed server too
    load_before = os.getloadavg()

    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"cpu": cpu_name(), "cpus_usable": default_workers, "platform": platform.platform(),
                                "python": platform.python_version(), "loadavg_before": load_before},
                    "sandbox": {k: features.get(k) for k in ("network_namespace", "uid_drop", "seccomp",
                                                                "subreaper", "rlimits", "safe_modules")},
                    "jobs": args.jobs, "repeats": args.repeats, "server_startup_s": round(startup, 4)}

    kinds: dict = {}
    run_many = {}
    for w in [int(x) for x in args.workers.split(",")]:
        med, times, out, cpu = timed(lambda: ex.run_many(jobs, workers=w), args.repeats)
        run_many[str(w)] = {"programs_per_s": round(args.jobs / med, 1), "median_s": round(med, 4),
                            "runs_s": [round(x, 4) for x in times],
                            "cpu_ms_per_program": round(cpu / args.jobs * 1000, 3)}
        for r in out:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
    result["run_many"] = run_many
    result["kinds_last_run"] = kinds

    med, times, _, cpu = timed(lambda: ex.validate_many(jobs), args.repeats)
    result["validate_many"] = {"tasks_per_s": round(args.jobs / med, 1),
                               "program_runs_per_s": round(2 * args.jobs / med, 1),
                               "median_s": round(med, 4), "workers_per_server": default_workers,
                               "cpu_ms_per_task": round(cpu / args.jobs * 1000, 3)}

    single = jobs[: args.single]
    lat = []
    for code, inp in single * max(1, args.repeats // 2):
        t = time.perf_counter()
        ex.run_program(code, inp)
        lat.append(time.perf_counter() - t)
    result["run_program_latency_ms"] = {"median": round(statistics.median(lat) * 1000, 3),
                                        "p90": round(sorted(lat)[int(0.9 * len(lat))] * 1000, 3)}
    lat = []
    for code, inp in single[: max(10, args.single // 2)]:
        t = time.perf_counter()
        ex.validate_task(code, inp)
        lat.append(time.perf_counter() - t)
    result["validate_task_latency_ms"] = {"median": round(statistics.median(lat) * 1000, 3)}

    spawn_jobs = jobs[: args.spawn_jobs]

    def spawn_all():
        with ThreadPoolExecutor(default_workers) as pool:
            return list(pool.map(lambda j: run_spawned(*j), spawn_jobs))

    med, times, out, cpu = timed(spawn_all, max(1, args.repeats // 2))
    fork_out = ex.run_many(spawn_jobs)
    # (the spawned interpreters' CPU is in this process's reaped children)
    result["spawn_per_program"] = {"programs_per_s": round(len(spawn_jobs) / med, 1), "median_s": round(med, 4),
                                   "jobs": len(spawn_jobs), "workers": default_workers,
                                   "cpu_ms_per_program": round(cpu / len(spawn_jobs) * 1000, 3),
                                   "same_results_as_fork_server": [(r.kind, r.output) for r in out]
                                   == [(r.kind, r.output) for r in fork_out]}
    fork_rate = run_many.get(str(default_workers), next(iter(run_many.values())))["programs_per_s"]
    result["speedup_fork_server_vs_spawn"] = round(fork_rate / result["spawn_per_program"]["programs_per_s"], 1)
    result["machine"]["loadavg_after"] = os.getloadavg()
    ex.shutdown()
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
