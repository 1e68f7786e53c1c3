"""A randomised fault campaign (`xtra bench --sections faults`): real studies run by `xtra study` drivers
on a two-node Ray cluster of this machine (`ray start`), with local or S3 storage (the local moto
server), take faults at random moments drawn from a seeded schedule; after each the campaign does what
a user would (`xtra study resume DIR`, or nothing for faults a study should ride out), and at the end
`xtra.studies.fault_checks` holds every trial against an uninterrupted run of the same study.

Fault kinds (`KINDS`): SIGKILL or SIGTERM of the driver, SIGKILL of a trial's Ray worker process, SIGKILL
of the second Ray node (its raylet and everything under it; the node is started again), the S3 server
stopped (SIGSTOP: it keeps its objects, which a moto restart would lose) for 10-60 s, a second driver
started on the study by mistake (it must refuse in one line), and a second driver with --break-lock
(the first must stop with exit 3; the campaign follows the new one). Disk-full is not injected: this
machine gives no unprivileged way to a small filesystem (no tmpfs or loop mount), and filling the
shared disk would hurt everyone on it.

The schedule is seeded (kinds, gaps, outage lengths); when a fault lands depends on how fast the
machine runs, so two campaigns with one seed draw the same sequence but not the same moments.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.testing.s3server import LocalS3Server, free_port

DRIVER_KILLS = ("driver_sigkill", "driver_sigterm")
RIDE_OUT = ("worker_sigkill", "node_sigkill", "storage_outage", "second_driver")
KINDS = (*DRIVER_KILLS, *RIDE_OUT, "break_lock")
S3_ONLY = ("storage_outage",)
RAY_BIN = str(Path(sys.executable).parent / "ray")


@dataclass(frozen=True)
class Segment:
    """One study of the campaign: `xtra study run STUDY ARGS`, in S3 or in a local directory."""

    name: str
    study: str
    args: tuple[str, ...]
    s3: bool
    search: bool = False


@dataclass(frozen=True)
class Schedule:
    """How faults are drawn: a gap after trials run (s), the outage's length (s), the kinds and weights."""

    seed: int
    gap_s: tuple[float, float] = (1.5, 6.0)
    outage_s: tuple[float, float] = (10.0, 60.0)
    node_down_s: tuple[float, float] = (2.0, 8.0)
    kinds: tuple[str, ...] = KINDS
    # one per kind of KINDS; the faults a study rides out cost the campaign less time than a resume
    weights: tuple[float, ...] = (0.8, 0.6, 2.5, 1.2, 0.8, 1.5, 0.4)
    order: tuple[str, ...] = ()  # a fixed sequence of kinds first (the short campaign of the tests)
    max_faults: int = 0  # stop injecting after this many (0: inject until every study is done)
    # and after this many in one study: a study that takes faults faster than it trains never ends
    per_study: int = 16


SMOKE = ("--preset", "smoke", "--set", "pretrain.samples=1024", "--set", "pretrain.checkpoint_every=256")
FULL_SEGMENTS = (
    Segment("grid-local", "block-size", (*SMOKE, "--seeds", "5"), s3=False),
    Segment("wsd-s3", "sample-budget", ("--preset", "smoke", "--set", 'pretrain.schedule="wsd"',
                                        "--set", "pretrain.checkpoint_every=256", "--set",
                                        "axes.pretrain.samples=[512,1024]", "--seeds", "2"), s3=True),
    Segment("search-s3", "lr-search", (*SMOKE, "--set", "search.num_samples=8"), s3=True, search=True),
    Segment("grid-s3", "block-size", (*SMOKE, "--seeds", "4"), s3=True),
    # successive halving over wsd branches: 4 configurations, 4 -> 2 -> 1 branches at 128 / 256 / 512 samples;
    # its trunks and branches train 64-192 samples at a time, so checkpoints every 128 (the smoke preset's)
    Segment("halving-s3", "lr-halving", ("--preset", "smoke", "--set", "pretrain.samples=512", "--set",
                                         "search.rungs=[128,256,512]", "--set", "pretrain.checkpoint_every=128"),
            s3=True, search=True),
)
QUICK_SEGMENTS = (Segment("grid-s3", "block-size", ("--preset", "smoke", "--set", "pretrain.samples=4096", "--set",
                                                     "pretrain.checkpoint_every=512"), s3=True),)
QUICK_ORDER = ("driver_sigterm", "worker_sigkill", "second_driver", "storage_outage", "node_sigkill",
               "driver_sigkill")


# ---------------------------------------------------------------------------------------------
# Processes


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children, theirs, ...)."""
    parents = {p: _ppid(p) for p in _pids()}
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def alive(pid: int) -> bool:
    state = ""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# The cluster: a head (2 CPUs) and a worker node (1 CPU), each with its own scratch root


class Cluster:
    """`ray start --head` and one `ray start --address` node in a private temp dir; the node can be
    SIGKILLed and started again. Nothing else's Ray is touched (`ray stop` would stop all of them)."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.temp_dir = tempfile.mkdtemp(prefix="xf", dir="/tmp")  # short: Ray's socket paths live under it
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_port = 0
        self.scratch = {"head": root / "scratch-head", "node": root / "scratch-node"}

    def _start(self, name: str, args: list[str]) -> None:
        from xtra.studies.ray import token_auth_available

        self.scratch[name].mkdir(parents=True, exist_ok=True)
        env = {**self.env, "XTRA_SCRATCH": str(self.scratch[name])}
        if name == "node" and token_auth_available():  # the head turned token authentication on by itself
            env["RAY_AUTH_MODE"] = "token"
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                 f"--object-manager-port={free_port()}", f"--node-manager-port={free_port()}"]
        if name == "node":
            self.node_port = int(ports[-1].split("=")[1])
        proc = subprocess.run([RAY_BIN, "start", *args, "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                               "--disable-usage-stats", "--object-store-memory=200000000", *ports],
                              capture_output=True, text=True, timeout=180, env=env, cwd=self.root)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed: {(proc.stdout + proc.stderr)[-2000:]}")

    def start(self) -> Cluster:
        self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false", "--num-cpus=2"])
        self.start_node()
        return self

    def start_node(self) -> None:
        self._start("node", [f"--address={self.address}", "--num-cpus=1"])

    def node_raylet(self) -> int | None:
        flag = f"--node_manager_port={self.node_port}"
        return next((p for p in _pids() if "raylet" in _cmdline(p) and flag in _cmdline(p)), None)

    def kill_node(self) -> list[int]:
        """SIGKILL the second node's raylet and every process under it (its workers: trials among them)."""
        raylet = self.node_raylet()
        if raylet is None:
            return []
        pids = [raylet, *descendants(raylet)]
        kill(pids)
        return pids

    def processes(self) -> list[int]:
        return [p for p in _pids() if p != os.getpid() and self.temp_dir in _cmdline(p)]

    def stop(self) -> None:
        raylets = [p for p in self.processes() if "raylet" in _cmdline(p)]
        every = {*self.processes(), *(d for r in raylets for d in descendants(r))}
        kill(sorted(every), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in every) and time.monotonic() < deadline:
            time.sleep(0.2)
        kill([p for p in every if alive(p)])
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Drivers: `xtra study` as a user runs it, output in a log file


@dataclass
class Driver:
    proc: subprocess.Popen
    log: Path
    command: list[str]
    started: float = field(default_factory=time.time)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def last_line(self) -> str:
        lines = self.output().strip().splitlines()
        return lines[-1] if lines else ""


@dataclass
class Context:
    root: Path
    cluster: Cluster
    env: dict[str, str]
    bucket: str | None
    server: LocalS3Server | None
    log: Callable[[str], None]
    drivers: int = 0
    faults: int = 0
    pending: list[Pending] = field(default_factory=list)

    def study_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "xtra.cli.main", "study", *args, "--no-report", "--logger", "none",
                "--address", self.cluster.address]

    def start_driver(self, *args: str) -> Driver:
        self.drivers += 1
        log = self.root / "drivers" / f"{self.drivers:03d}-{args[0]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.study_cmd(*args)
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=self.root)
        return Driver(proc, log, cmd)

    def storage_of(self, seg: Segment, kind: str) -> list[str]:
        return ["--storage", f"{self.bucket}/{kind}"] if seg.s3 else []


def running_attempts(study_dir: Path, scratch: list[Path]) -> list[dict[str, Any]]:
    """The attempts running now: a start record whose process is alive (a Ray worker) and no finish after it.
    Trials of a study in S3 run in a node's scratch directory, the others in the study directory."""
    found = []
    for path in [*Path(study_dir).glob(f"trials/*/{td.ATTEMPTS}"), *(p for s in scratch for p in s.rglob(td.ATTEMPTS))]:
        records = td.read_jsonl(path)
        if not records or records[-1].get("event") != "start":
            continue
        pid = int(records[-1].get("pid") or 0)
        if pid and alive(pid) and _cmdline(pid).startswith("ray::"):
            found.append({**records[-1], "trial": path.parent.name, "dir": str(path.parent)})
    return found


def progress(run_dir: Path) -> int:
    """Samples the trial has logged (the last metrics row; rows come at each log window's end)."""
    rows = td.read_metrics(Path(run_dir))
    return int(rows[-1].get("samples_seen") or 0) if rows else 0


# ---------------------------------------------------------------------------------------------
# Faults


def _wait_exit(driver: Driver, timeout: float, ctx: Context | None = None) -> int | None:
    """The driver's exit code, or None if it runs on past `timeout`; an outage or a node down meanwhile
    ends when due (`settle`)."""
    deadline = time.monotonic() + timeout
    while driver.proc.poll() is None and time.monotonic() < deadline:
        if ctx is not None:
            settle(ctx)
        time.sleep(0.1)
    return driver.proc.poll()


def inject(kind: str, ctx: Context, seg: Segment, study_dir: Path, driver: Driver, rng: random.Random,
           sched: Schedule) -> tuple[dict[str, Any], Driver | None]:
    """Inject one fault; returns its record (what was hit, progress of the trials it hit) and the driver
    that holds the study afterwards (None when the campaign must resume it)."""
    running = running_attempts(study_dir, list(ctx.cluster.scratch.values()))
    record: dict[str, Any] = {"kind": kind, "segment": seg.name, "time": time.time(), "hit": []}

    def hit(attempts: list[dict[str, Any]]) -> None:
        record["hit"] = [{"trial": a["trial"], "samples": progress(Path(a["dir"])), "pid": a.get("pid")}
                         for a in attempts]

    if kind in DRIVER_KILLS:
        hit(running)
        if kind == "driver_sigkill":
            kill([driver.proc.pid])
        else:
            kill([driver.proc.pid], signal.SIGTERM)
        record["exit"] = _wait_exit(driver, 240, ctx)
        if record["exit"] is None:  # a driver that would not stop: what a user does next
            kill([driver.proc.pid])
            record["exit"] = _wait_exit(driver, 30, ctx)
            record["violation"] = "the driver did not exit within 240 s of SIGTERM"
        record["last_line"] = driver.last_line()
        return record, None
    if kind == "worker_sigkill":
        if running:
            victim = rng.choice(running)
            hit([victim])
            kill([int(victim["pid"])])
        return record, driver
    # The node's restart, the end of an outage and the second driver's verdict come later (`settle`):
    # meanwhile the campaign goes on injecting, as faults on a shared cluster come several at a time.
    if kind == "node_sigkill":
        on_node = [a for a in running if a["pid"] in descendants(ctx.cluster.node_raylet() or -1)]
        hit(on_node)
        record["killed_pids"] = len(ctx.cluster.kill_node())
        record["down_s"] = round(rng.uniform(*sched.node_down_s), 1)
        ctx.pending.append(Pending(kind, time.monotonic() + record["down_s"], ctx.cluster.start_node))
        return record, driver
    if kind == "storage_outage":
        assert ctx.server is not None
        record["outage_s"] = round(rng.uniform(*sched.outage_s), 1)
        ctx.server.pause()
        ctx.pending.append(Pending(kind, time.monotonic() + record["outage_s"], ctx.server.resume))
        return record, driver
    if kind == "second_driver":
        second = ctx.start_driver("resume", str(study_dir))
        first = driver
        ctx.pending.append(Pending(kind, time.monotonic() + 300, lambda: _refused(second, record, first), second))
        return record, driver
    assert kind == "break_lock", kind
    hit(running)
    second = ctx.start_driver("resume", str(study_dir), "--break-lock")
    record["exit"] = _wait_exit(driver, 300, ctx)
    record["last_line"] = driver.last_line()
    if record["exit"] not in (0, 3):
        record["violation"] = f"the first driver exited {record['exit']} after --break-lock: {record['last_line']}"
    return record, second


@dataclass
class Pending:
    """What a fault leaves to do: `finish` at `due` (monotonic s), or once `driver` has exited."""

    kind: str
    due: float
    finish: Callable[[], None]
    driver: Driver | None = None

    def ready(self) -> bool:
        return time.monotonic() >= self.due or (self.driver is not None and self.driver.proc.poll() is not None)


def settle(ctx: Context, *, block: bool = False, kinds: tuple[str, ...] = KINDS) -> None:
    """Finish what earlier faults left pending: those that are due, or (`block`) every one of `kinds`."""
    for item in list(ctx.pending):
        if item.kind not in kinds:
            continue
        if block and item.driver is not None:
            _wait_exit(item.driver, max(0.0, item.due - time.monotonic()), ctx)
        elif block:
            time.sleep(max(0.0, item.due - time.monotonic()))
        if item in ctx.pending and item.ready():
            ctx.pending.remove(item)
            item.finish()


def _refused(second: Driver, record: dict[str, Any], first: Driver) -> None:
    """A second driver started on a running study must have refused in one line, changing nothing; one
    that succeeded after the first had ended (the first was finishing as it started: the lock passed from
    one to the other) is a note, and the final checks (duplicated, different) hold it to the result."""
    code = second.proc.poll()
    if code is None:
        kill([second.proc.pid])
        second.proc.wait()
    record.update(exit=code, last_line=second.last_line(), lines=len(second.output().strip().splitlines()))
    if code == 0 and first.proc.poll() is not None:
        record["note"] = (f"the first driver (exit {first.proc.returncode}) ended as the second started; the "
                          f"second took the study after it and exited 0: {record['last_line']}")
    elif code in (0, None) or record["lines"] != 1 or "in use by" not in record["last_line"]:
        record["violation"] = f"a second driver was not refused in one line: exit {code}: {record['last_line']}"


def kinds_for(seg: Segment, sched: Schedule) -> tuple[list[str], list[float]]:
    kinds = [k for k in sched.kinds if seg.s3 or k not in S3_ONLY]
    weights = [dict(zip(sched.kinds, sched.weights)).get(k, 1.0) if sched.weights else 1.0 for k in kinds]
    return kinds, weights


def _wait_running(ctx: Context, study_dir: Path, driver: Driver, timeout: float = 300) -> bool:
    """Until a trial of this driver runs (True) or the driver exits (False)."""
    deadline = time.monotonic() + timeout
    while driver.proc.poll() is None and time.monotonic() < deadline:
        settle(ctx)
        if any(_after(a, driver.started) for a in running_attempts(study_dir, list(ctx.cluster.scratch.values()))):
            return True
        time.sleep(0.2)
    return driver.proc.poll() is None


def _after(attempt: dict[str, Any], since: float) -> bool:
    started = time.mktime(time.strptime(attempt["time"], "%Y-%m-%d %H:%M:%S"))
    return started >= int(since)


def _counts_line(driver: Driver) -> str:
    """The driver's closing line, `STUDY_DIR: 3 finished · 1 failed (ran 4, reused 0 finished)`."""
    return next((line for line in reversed(driver.output().splitlines()) if "(ran " in line and "reused" in line), "")


def _all_finished(driver: Driver, study_dir: Path) -> bool:
    counts = _counts_line(driver).removeprefix(f"{study_dir}: ").split(" (ran ")[0]
    return all(part.strip().endswith(" finished") for part in counts.split("·"))


def _draw(ctx: Context, seg: Segment, sched: Schedule, rng: random.Random, order: list[str]) -> str:
    """The next kind: the fixed order first, then the seeded draw; a node already down or an outage under
    way is not drawn again until it is over."""
    kinds, weights = kinds_for(seg, sched)
    busy = {p.kind for p in ctx.pending if p.kind in ("node_sigkill", "storage_outage")}
    if order and order[0] not in busy:
        kind = order.pop(0)
        return "worker_sigkill" if kind in S3_ONLY and not seg.s3 else kind
    free = [(k, w) for k, w in zip(kinds, weights) if k not in busy]
    return rng.choices([k for k, _ in free], [w for _, w in free])[0]


def _sleep(ctx: Context, driver: Driver, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while driver.proc.poll() is None and time.monotonic() < deadline:
        settle(ctx)
        time.sleep(0.1)


def run_segment(ctx: Context, seg: Segment, study_dir: Path, rng: random.Random, sched: Schedule,
                order: list[str]) -> dict[str, Any]:
    """Run `seg` to completion under faults; every driver exit but success is followed by a resume."""
    faults: list[dict[str, Any]] = []
    resumes, violations, notes = 0, [], []
    driver: Driver | None = ctx.start_driver("run", seg.study, *seg.args, "--out", str(study_dir),
                                             *ctx.storage_of(seg, "faulted"))
    t0 = time.monotonic()
    while True:
        settle(ctx)
        if driver is None or driver.proc.poll() is not None:
            settle(ctx, block=True, kinds=("second_driver",))  # its verdict before another driver starts
            code = None if driver is None else driver.proc.returncode
            if code == 0 and driver is not None and _all_finished(driver, study_dir):
                break
            if code == 0 and driver is not None:  # a user who reads "1 failed" resumes, which reruns it
                notes.append(f"{seg.name}: the driver ended with trials not finished: {_counts_line(driver)}")
            if driver is not None and code not in (0, 3):  # 3: it lost the study (lease), and says so
                violations.append(f"{seg.name}: a driver exited {code}: {driver.last_line()}")
            if resumes > 60:
                violations.append(f"{seg.name}: gave up after {resumes} resumes")
                break
            resumes += 1
            driver = ctx.start_driver("resume", str(study_dir))
            continue
        if (sched.max_faults and ctx.faults >= sched.max_faults) or len(faults) >= sched.per_study:
            # the rest of the study runs undisturbed
            _sleep(ctx, driver, 1.0)
            continue
        if not _wait_running(ctx, study_dir, driver):
            continue
        _sleep(ctx, driver, rng.uniform(*sched.gap_s))
        if driver.proc.poll() is not None:
            continue
        kind = _draw(ctx, seg, sched, rng, order)
        if kind not in RIDE_OUT:  # the driver is stopped or replaced: a second driver's verdict first
            settle(ctx, block=True, kinds=("second_driver",))
        record, driver = inject(kind, ctx, seg, study_dir, driver, rng, sched)
        record["at_s"] = round(time.monotonic() - t0, 1)
        faults.append(record)
        ctx.faults += 1
        ctx.log(f"{seg.name} +{record['at_s']:.0f}s {kind}: hit {len(record['hit'])} trial(s)"
                + (f", outage {record['outage_s']} s" if "outage_s" in record else "")
                + (f", driver exit {record['exit']}" if "exit" in record else ""))
    settle(ctx, block=True)
    violations += [f"{seg.name}: {r['kind']}: {r['violation']}" for r in faults if "violation" in r]
    notes += [f"{seg.name}: {r['kind']}: {r['note']}" for r in faults if "note" in r]
    return {"segment": seg.name, "faults": faults, "resumes": resumes, "violations": violations, "notes": notes,
            "wall_s": round(time.monotonic() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# The campaign


def _driver_env(server: LocalS3Server | None) -> dict[str, str]:
    """This environment less injected faults and a user's RAY_ADDRESS or AWS settings, plus the S3 server's.
    Drivers and Ray nodes import xtra from where this process did (they run outside the repository): a
    campaign started from a copy of the code is not changed under it by edits to the working tree."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XTRA_FAULT_", "AWS_")) and k not in ("RAY_ADDRESS", "XTRA_PRETRAIN_HOOKS")}
    code = str(Path(td.__file__).resolve().parents[1])  # the folder holding the xtra package
    return {**env, **(server.env if server else {}),
            "PYTHONPATH": os.pathsep.join([code, *filter(None, [env.get("PYTHONPATH")])])}


def _reference(ctx: Context, seg: Segment, study_dir: Path) -> float:
    t0 = time.monotonic()
    driver = ctx.start_driver("run", seg.study, *seg.args, "--out", str(study_dir), *ctx.storage_of(seg, "reference"))
    if driver.proc.wait() != 0:
        raise RuntimeError(f"the uninterrupted run of {seg.name} failed: {driver.output()[-2000:]}")
    return time.monotonic() - t0


def _full_copy(ctx: Context, seg: Segment, kind: str, study_dir: Path) -> Path:
    """A local copy of the study with every checkpoint (a study in S3 is pulled from its URI alone)."""
    if not seg.s3:
        return study_dir
    from xtra.studies.runner import study_copy

    return study_copy(f"{ctx.bucket}/{kind}/{study_dir.name}", ctx.root / "copies" / kind / seg.name,
                      checkpoints=True)[0]


def run_campaign(seed: int, *, quick: bool = False, root: Path | None = None, log: Callable[[str], None] = print,
                 segments: tuple[Segment, ...] | None = None, schedule: Schedule | None = None) -> dict[str, Any]:
    """Reference runs, then the same studies under faults, then the checks; returns the whole record."""
    from xtra.studies import fault_checks

    segments = segments or (QUICK_SEGMENTS if quick else FULL_SEGMENTS)
    sched = schedule or Schedule(seed=seed, **({"gap_s": (2.0, 5.0), "outage_s": (10.0, 12.0), "order": QUICK_ORDER,
                                                "max_faults": len(QUICK_ORDER)} if quick else {}))
    order = list(sched.order)
    root = Path(root or tempfile.mkdtemp(prefix="xtra-faults-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    load = [os.getloadavg()[0]]
    t0 = time.monotonic()
    server = LocalS3Server().start() if any(s.s3 for s in segments) else None
    saved = dict(os.environ)
    cluster = None
    try:
        if server is not None:  # this process reads the studies in S3 too
            os.environ.update(server.env)
        env = _driver_env(server)
        cluster = Cluster(root, env).start()
        ctx = Context(root, cluster, env, server.create_bucket("faults") if server else None, server, log)
        reference = {}
        for seg in segments:
            reference[seg.name] = round(_reference(ctx, seg, root / "reference" / seg.name), 1)
            log(f"{seg.name}: uninterrupted run {reference[seg.name]:.0f} s")
        runs = []
        for seg in segments:
            runs.append(run_segment(ctx, seg, root / "faulted" / seg.name, rng, sched, order))
        for seg, run in zip(segments, runs):
            mine = _full_copy(ctx, seg, "faulted", root / "faulted" / seg.name)
            ref = _full_copy(ctx, seg, "reference", root / "reference" / seg.name)
            run["check"] = fault_checks.check_study(mine, ref, root / "alone", search=seg.search)
            fault_checks.work_lost(run["faults"], mine)
            log(f"{seg.name}: {_line(run)}")
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()
        os.environ.clear()
        os.environ.update(saved)
    load.append(os.getloadavg()[0])
    return fault_checks.summarise(seed, quick, runs, reference, time.monotonic() - t0, load, sched, KINDS)


def _line(run: dict[str, Any]) -> str:
    c = run["check"]
    return (f"{len(run['faults'])} faults, {run['resumes']} resumes, {c['finished']}/{c['planned']} finished, "
            f"lost {c['lost']}, duplicated {len(c['duplicated'])}, left running {len(c['left_running'])}, "
            f"{c['compared']} compared ({c['reconstructed']} reconstructed), {len(c['different'])} different, "
            + (f"halving ladder of {c['ladder_rungs']} rungs, " if c.get("ladder_rungs") is not None else "")
            + f"problems {c['problems']}, violations {run['violations']}")
