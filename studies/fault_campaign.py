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
    gap_s: tuple[float, float] = (4.0, 12.0)
    outage_s: tuple[float, float] = (10.0, 60.0)
    node_down_s: tuple[float, float] = (2.0, 8.0)
    kinds: tuple[str, ...] = KINDS
    # one per kind of KINDS; the faults a study rides out cost the campaign less time than a resume
    weights: tuple[float, ...] = (1.0, 1.0, 1.5, 1.0, 1.0, 1.5, 0.7)
    order: tuple[str, ...] = ()  # a fixed sequence of kinds first (the short campaign of the tests)


SMOKE = ("--preset", "smoke", "--set", "pretrain.samples=1024", "--set", "pretrain.checkpoint_every=256")
FULL_SEGMENTS = (
    Segment("grid-local", "block-size", (*SMOKE, "--seeds", "5"), s3=False),
    Segment("wsd-s3", "sample-budget", ("--preset", "smoke", "--set", 'pretrain.schedule="wsd"',
                                        "--set", "pretrain.checkpoint_every=256", "--set",
                                        "axes.pretrain.samples=[512,1024]", "--seeds", "2"), s3=True),
    Segment("search-s3", "lr-search", (*SMOKE, "--set", "search.num_samples=6"), s3=True, search=True),
    Segment("grid-s3", "block-size", (*SMOKE, "--seeds", "4"), s3=True),
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


def _wait_exit(driver: Driver, timeout: float) -> int | None:
    try:
        return driver.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def inject(kind: str, ctx: Context, seg: Segment, study_dir: Path, driver: Driver, rng: random.Random,
           sched: Schedule) -> tuple[dict[str, Any], Driver | None]:
    """Inject one fault; returns its record (what was hit, progress of the trials it hit) and the driver
    that holds the study afterwards (None when the campaign must resume it)."""
    running = running_attempts(study_dir, list(ctx.cluster.scratch.values()))
    record: dict[str, Any] = {"kind": kind, "segment": seg.name, "time": time.time(), "hit": []}

    def hit(attempts: list[dict[str, Any]]) -> None:
        record["hit"] = [{"trial": a["trial"], "samples": progress(Path(a["dir"]))} for a in attempts]

    if kind in DRIVER_KILLS:
        hit(running)
        if kind == "driver_sigkill":
            kill([driver.proc.pid])
        else:
            kill([driver.proc.pid], signal.SIGTERM)
        record["exit"] = _wait_exit(driver, 240)
        if record["exit"] is None:  # a driver that would not stop: what a user does next
            kill([driver.proc.pid])
            record["exit"] = _wait_exit(driver, 30)
            record["violation"] = "the driver did not exit within 240 s of SIGTERM"
        record["last_line"] = driver.last_line()
        return record, None
    if kind == "worker_sigkill":
        if running:
            victim = rng.choice(running)
            hit([victim])
            kill([int(victim["pid"])])
        return record, driver
    if kind == "node_sigkill":
        on_node = [a for a in running if a["pid"] in descendants(ctx.cluster.node_raylet() or -1)]
        hit(on_node)
        record["killed_pids"] = len(ctx.cluster.kill_node())
        time.sleep(rng.uniform(*sched.node_down_s))
        ctx.cluster.start_node()
        return record, driver
    if kind == "storage_outage":
        assert ctx.server is not None
        record["outage_s"] = round(rng.uniform(*sched.outage_s), 1)
        ctx.server.pause()
        try:
            time.sleep(record["outage_s"])
        finally:
            ctx.server.resume()
        return record, driver
    if kind == "second_driver":
        second = ctx.start_driver("resume", str(study_dir))
        code = _wait_exit(second, 300)
        record.update(exit=code, last_line=second.last_line(), lines=len(second.output().strip().splitlines()))
        if code in (0, None) or record["lines"] != 1 or "in use by" not in record["last_line"]:
            record["violation"] = f"a second driver was not refused in one line: exit {code}: {record['last_line']}"
            if code is None:
                kill([second.proc.pid])
        return record, driver
    assert kind == "break_lock", kind
    hit(running)
    second = ctx.start_driver("resume", str(study_dir), "--break-lock")
    record["exit"] = _wait_exit(driver, 300)
    record["last_line"] = driver.last_line()
    if record["exit"] not in (0, 3):
        record["violation"] = f"the first driver exited {record['exit']} after --break-lock: {record['last_line']}"
    return record, second


def _kinds_for(seg: Segment, sched: Schedule) -> tuple[list[str], list[float]]:
    kinds = [k for k in sched.kinds if seg.s3 or k not in S3_ONLY]
    weights = [dict(zip(sched.kinds, sched.weights)).get(k, 1.0) if sched.weights else 1.0 for k in kinds]
    return kinds, weights


def _wait_running(ctx: Context, study_dir: Path, driver: Driver, timeout: float = 300) -> bool:
    """Until a trial of this driver runs (True) or the driver exits (False)."""
    deadline = time.monotonic() + timeout
    while driver.proc.poll() is None and time.monotonic() < deadline:
        if any(_after(a, driver.started) for a in running_attempts(study_dir, list(ctx.cluster.scratch.values()))):
            return True
        time.sleep(0.2)
    return driver.proc.poll() is None


def _after(attempt: dict[str, Any], since: float) -> bool:
    started = time.mktime(time.strptime(attempt["time"], "%Y-%m-%d %H:%M:%S"))
    return started >= int(since)


def run_segment(ctx: Context, seg: Segment, study_dir: Path, rng: random.Random, sched: Schedule,
                order: list[str]) -> dict[str, Any]:
    """Run `seg` to completion under faults; every driver exit but success is followed by a resume."""
    kinds, weights = _kinds_for(seg, sched)
    faults: list[dict[str, Any]] = []
    resumes, violations = 0, []
    driver: Driver | None = ctx.start_driver("run", seg.study, *seg.args, "--out", str(study_dir),
                                             *ctx.storage_of(seg, "faulted"))
    t0 = time.monotonic()
    while True:
        if driver is None or driver.proc.poll() is not None:
            code = None if driver is None else driver.proc.returncode
            if code == 0:
                break
            if driver is not None and code not in (3, -signal.SIGTERM, 143, 130):
                violations.append(f"{seg.name}: a driver exited {code}: {driver.last_line()}")
            if resumes > 60:
                violations.append(f"{seg.name}: gave up after {resumes} resumes")
                break
            resumes += 1
            driver = ctx.start_driver("resume", str(study_dir))
            continue
        if not _wait_running(ctx, study_dir, driver):
            continue
        gap = rng.uniform(*sched.gap_s)
        deadline = time.monotonic() + gap
        while driver.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if driver.proc.poll() is not None:
            continue
        kind = order.pop(0) if order else rng.choices(kinds, weights)[0]
        if kind in S3_ONLY and not seg.s3:
            kind = "worker_sigkill"
        record, driver = inject(kind, ctx, seg, study_dir, driver, rng, sched)
        record["at_s"] = round(time.monotonic() - t0, 1)
        faults.append(record)
        if "violation" in record:
            violations.append(f"{seg.name}: {record['kind']}: {record['violation']}")
        ctx.log(f"{seg.name} +{record['at_s']:.0f}s {kind}: hit {len(record['hit'])} trial(s)"
                + (f", outage {record['outage_s']} s" if "outage_s" in record else "")
                + (f", driver exit {record['exit']}" if "exit" in record else ""))
    return {"segment": seg.name, "faults": faults, "resumes": resumes, "violations": violations,
            "wall_s": round(time.monotonic() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# The campaign


def _driver_env(server: LocalS3Server | None) -> dict[str, str]:
    """This environment less injected faults and a user's RAY_ADDRESS or AWS settings, plus the S3 server's.
    Drivers and Ray nodes import xtra from where this process did (they run outside the repository): a
    campaign started from a copy of the code is not changed under it by edits to the working tree."""
    import xtra

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XTRA_FAULT_", "AWS_")) and k not in ("RAY_ADDRESS", "XTRA_PRETRAIN_HOOKS")}
    code = str(Path(xtra.__file__).resolve().parents[1])
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
    sched = schedule or Schedule(seed=seed, **({"gap_s": (2.0, 5.0), "outage_s": (10.0, 12.0)} if quick else {}))
    order = list(sched.order or (QUICK_ORDER if quick else ()))
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
    return summarise(seed, quick, runs, reference, time.monotonic() - t0, load, sched)


def _line(run: dict[str, Any]) -> str:
    c = run["check"]
    return (f"{len(run['faults'])} faults, {run['resumes']} resumes, {c['finished']}/{c['planned']} finished, "
            f"lost {c['lost']}, duplicated {len(c['duplicated'])}, left running {len(c['left_running'])}, "
            f"{c['compared']} compared ({c['reconstructed']} reconstructed), {len(c['different'])} different, "
            f"problems {c['problems']}, violations {run['violations']}")


def summarise(seed: int, quick: bool, runs: list[dict[str, Any]], reference: dict[str, float], wall_s: float,
              load: list[float], sched: Schedule) -> dict[str, Any]:
    faults = [f for r in runs for f in r["faults"]]
    kinds = {k: sum(1 for f in faults if f["kind"] == k) for k in KINDS}
    lost = [int(f.get("lost_samples", 0)) for f in faults]
    checks = [r["check"] for r in runs]
    return {
        "seed": seed, "quick": quick, "wall_s": round(wall_s, 1), "load_1min": [round(x, 2) for x in load],
        "cpus": os.cpu_count(), "schedule": {"gap_s": sched.gap_s, "outage_s": sched.outage_s,
                                             "node_down_s": sched.node_down_s},
        "faults": len(faults), "faults_per_kind": {k: n for k, n in kinds.items() if n},
        "trials": sum(c["planned"] for c in checks), "resumes": sum(r["resumes"] for r in runs),
        "lost": sum(c["lost"] for c in checks), "duplicated": sum(len(c["duplicated"]) for c in checks),
        "left_running": sum(len(c["left_running"]) for c in checks),
        "different": sum(len(c["different"]) for c in checks), "compared": sum(c["compared"] for c in checks),
        "problems": [p for c in checks for p in c["problems"]],
        "violations": [v for r in runs for v in r["violations"]],
        "work_lost_samples": {"mean": round(sum(lost) / max(len(lost), 1), 1), "worst": max(lost, default=0)},
        "reference_s": reference, "segments": runs,
    }


def passed(result: dict[str, Any]) -> bool:
    return not (result["lost"] or result["duplicated"] or result["left_running"] or result["different"]
                or result["problems"] or result["violations"])


def to_markdown(result: dict[str, Any], command: str) -> str:
    r = result
    lines = [
        "# Fault campaign (CPU)", "",
        f"Command: `{command}` (seed {r['seed']}). {r['cpus']} CPU cores shared with other work: 1-minute load "
        f"average {r['load_1min'][0]} at the start, {r['load_1min'][-1]} at the end; {r['wall_s'] / 60:.1f} "
        f"minutes in all (uninterrupted reference runs included).", "",
        f"**{r['faults']} faults over {r['trials']} trials, {r['resumes']} resumes: {r['lost']} lost, "
        f"{r['duplicated']} duplicated, {r['left_running']} left running, {r['different']} of {r['compared']} "
        f"trials different from the uninterrupted run.** Work lost per fault (samples retrained): mean "
        f"{r['work_lost_samples']['mean']}, worst {r['work_lost_samples']['worst']} (checkpoint interval 256).", "",
        "| fault | count |", "|---|---|",
        *(f"| {k} | {n} |" for k, n in r["faults_per_kind"].items()), "",
        "| study | faults | resumes | planned | finished | lost | duplicated | compared (reconstructed) | "
        "different | wall (s) |", "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seg in r["segments"]:
        c = seg["check"]
        lines.append(f"| {seg['segment']} | {len(seg['faults'])} | {seg['resumes']} | {c['planned']} | {c['finished']} "
                     f"| {c['lost']} | {len(c['duplicated'])} | {c['compared']} ({c['reconstructed']}) | "
                     f"{len(c['different'])} | {seg['wall_s']} |")
    lines += ["", f"Problems: {r['problems'] or 'none'}. Violations: {r['violations'] or 'none'}."]
    return "\n".join(lines) + "\n"
