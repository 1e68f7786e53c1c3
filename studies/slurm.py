"""Studies on Slurm: the job script, ``--slurm`` options, stopping on Slurm's signals, the job's state.

One job runs one study: a Ray head on the job's first node (the batch script itself), a Ray worker on
each other node (``srun``), and the study's driver (``xtra study run``, or ``xtra study resume`` in a
requeued allocation) connected to them. ``--signal=B:USR1@N`` warns the script N seconds before the time
limit; it passes the signal on to the driver, which stops the way Ctrl-C stops it (``stop_on_signals``):
no new trials, the running ones end and keep their last checkpoint, results are written, the lease is
released, and the driver exits with ``STOPPED_EXIT``; the script then requeues the job (``--requeue``),
and the next allocation resumes. ``scancel`` / ``scontrol requeue`` / preemption send SIGTERM: the driver
stops the same way and Slurm decides what happens to the job.

``render`` writes the script: with no options it is the shipped ``scripts/slurm/study.sbatch`` (for
``sbatch`` by hand); ``xtra study submit`` fills in the ``#SBATCH`` lines from ``--slurm`` and the
``xtra study run`` arguments, keeps it in ``STUDY_DIR/slurm/`` and records the job in
``STUDY_DIR/slurm/jobs.json`` (this module owns ``slurm/``). ``job_state`` asks ``scontrol`` (or
``sacct``) about a job, and says so in one line when Slurm is not there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtra.fileio import atomic_write_json, atomic_write_text
from xtra.studydir import StudyError
from xtra.trialdir import read_json

LOST_LEASE = "lost lease"  # Stop.signal when the driver lost its study rather than received a signal
STOPPED_EXIT = 75  # EX_TEMPFAIL: the driver stopped on a signal with trials left; run it again to continue
SLURM_DIR = "slurm"  # STUDY_DIR/slurm/: study.sbatch, jobs.json, slurm-<job id>.out
SCRIPT = "study.sbatch"
JOBS = "jobs.json"
DEFAULT_SIGNAL_S = 300  # USR1 this long before the time limit: Ray and the driver stop well within it

_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")
_NAME = re.compile(r"^[A-Za-z0-9_.+:@-]+$")
_MEM = re.compile(r"^\d+[KMGT]?$")


def _count(low: int) -> Any:
    def check(v: str) -> str | None:
        return None if v.isdigit() and int(v) >= low else f"a whole number >= {low}"
    return check


def _pattern(rx: re.Pattern[str], what: str) -> Any:
    return lambda v: None if rx.match(v) else what


# --slurm KEY=VALUE: the sbatch option each key becomes, and what its value may be.
OPTIONS: dict[str, Any] = {
    "partition": _pattern(_NAME, "a partition name"),
    "account": _pattern(_NAME, "an account name"),
    "qos": _pattern(_NAME, "a QOS name"),
    "constraint": _pattern(re.compile(r"^[A-Za-z0-9_.&|\[\]*:-]+$"), "a node feature expression"),
    "reservation": _pattern(_NAME, "a reservation name"),
    "job-name": _pattern(_NAME, "letters, digits and _.+:@-"),
    "nodes": _count(1),
    "gpus-per-node": _count(0),
    "cpus-per-task": _count(1),
    "mem": _pattern(_MEM, "megabytes or a size like 64G (0 = all of the node's memory)"),
    "time": _pattern(_TIME, "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
    "signal": _count(1),
}
NOT_SBATCH = {"signal"}  # ours: seconds before the time limit for --signal=B:USR1@N


def parse_slurm(text: str | None) -> dict[str, str]:
    """``"partition=gpu,nodes=2,gpus-per-node=8,time=24:00:00"`` -> {key: value}; one-line errors."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise StudyError(f"--slurm {item!r}: expected KEY=VALUE (keys: {', '.join(OPTIONS)})")
        if key not in OPTIONS:
            raise StudyError(f"--slurm {key}: unknown key (allowed: {', '.join(OPTIONS)})")
        bad = OPTIONS[key](value)
        if bad:
            raise StudyError(f"--slurm {key}={value}: expected {bad}")
        if key in out:
            raise StudyError(f"--slurm {key}: given twice")
        out[key] = value
    return out


HEADER = """\
#!/bin/bash
# An xtra study as one Slurm job: a Ray head on the job's first node, a Ray worker on each other node,
# the study's driver on the first node. Submit it by hand:
#
#   sbatch --partition=gpu --nodes=2 --gpus-per-node=8 --cpus-per-task=32 --time=24:00:00 \\
#       scripts/slurm/study.sbatch block-size --preset paper --out /shared/studies/block-size [run options]
#
# (the arguments are those of `xtra study run`; --out is required), or let
# `xtra study submit STUDY --out DIR --slurm "partition=gpu,nodes=2,..."` write this script, filled in, into
# DIR/slurm/ and submit it. The first allocation runs `xtra study run ARGS`; a requeued one resumes the
# study if it started (`xtra study resume`; with --storage s3://..., from the store into a fresh scratch copy), so
# finished trials are never run again and unfinished ones continue from their last checkpoint.
#
# SIGUSR1 (--signal=B:USR1@N) arrives N seconds before the time limit (up to 60 s earlier): the driver
# starts no new trials, each running trial checkpoints where it is (within XTRA_STOP_GRACE_S, default
# N/3), results are written, the lease is released, and the script requeues the job. scancel,
# `scontrol requeue` and preemption send SIGTERM: the driver stops the same way, Slurm decides.
# Environment: XTRA_CMD (default `xtra`), RAY_CMD (default `ray`), XTRA_SLURM_SCRATCH (node-local
# scratch root, default $TMPDIR or /tmp), XTRA_RAY_PORT (default 6379 + job id % 1000).
#SBATCH --requeue
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
"""

BODY = r"""
set -uo pipefail
read -ra XTRA <<< "${XTRA_CMD:-xtra}"
read -ra RAY <<< "${RAY_CMD:-ray}"
if [ $# -eq 0 ]; then
    echo "usage: sbatch study.sbatch STUDY --out DIR [xtra study run options]" >&2
    exit 2
fi
out="" storage=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out) out=${args[i+1]:-} ;;
        --out=*) out=${args[i]#--out=} ;;
        --storage) storage=${args[i+1]:-} ;;
        --storage=*) storage=${args[i]#--storage=} ;;
    esac
done
if [ -z "$out" ]; then
    echo "study.sbatch: pass --out DIR, the study directory every allocation of this job continues" >&2
    exit 2
fi
name=$(basename "$out")
restart=${SLURM_RESTART_COUNT:-0}
scratch=${XTRA_SLURM_SCRATCH:-${TMPDIR:-/tmp}}/xtra-${SLURM_JOB_ID}-${restart}
mkdir -p "$scratch"
export XTRA_SCRATCH=$scratch/trials  # trials of a study kept in an object store work here (node-local)
echo "xtra: job ${SLURM_JOB_ID} allocation $((restart + 1)) on ${SLURM_JOB_NODELIST} ($(date '+%F %T'))"

stop=""
driver=""
on_signal() {
    stop=$1
    echo "xtra: received SIG$1: stopping the study ($(date '+%F %T'))"
    # SIGTERM, not USR1: Ray Tune takes USR1 over while it runs, the driver's own TERM handler stops Tune
    if [ -n "$driver" ]; then kill -TERM "$driver" 2>/dev/null; fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# Ray: the head here (the first node of the job), a worker on each other node; this job's CPUs and GPUs.
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_ip=$(hostname -I 2>/dev/null | awk '{print $1}')
head_ip=${head_ip:-127.0.0.1}
port=${XTRA_RAY_PORT:-$((6379 + SLURM_JOB_ID % 1000))}
cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
gpus=${SLURM_GPUS_PER_NODE:-0}
gpus=${gpus##*:}  # "a100:8" -> 8
if [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
    export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}  # the head turns token auth on; workers and `ray status` need it
fi
ray_tmp=/tmp/xr-${SLURM_JOB_ID}-${restart}  # short: Ray's socket paths under it must fit in 107 bytes
ray_pids=()
"${RAY[@]}" start --head --block --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" \
    --num-gpus="$gpus" --include-dashboard=false --temp-dir="$ray_tmp" --disable-usage-stats &
ray_pids+=($!)
if [ "${#nodes[@]}" -gt 1 ]; then
    srun --nodes=$((${#nodes[@]} - 1)) --ntasks=$((${#nodes[@]} - 1)) --ntasks-per-node=1 \
        --exclude="${nodes[0]}" --kill-on-bad-exit=0 \
        "${RAY[@]}" start --block --address="$head_ip:$port" --num-cpus="$cpus" --num-gpus="$gpus" \
        --temp-dir="$ray_tmp" --disable-usage-stats &
    ray_pids+=($!)
fi
for _ in $(seq 120); do
    alive=$("${RAY[@]}" status --address="$head_ip:$port" 2>/dev/null | grep -c ' node_')
    if [ "${alive:-0}" -ge "${#nodes[@]}" ]; then break; fi
    if [ -n "$stop" ]; then break; fi
    if ! kill -0 "${ray_pids[0]}" 2>/dev/null; then
        echo "xtra: the Ray head did not start (its output is above)" >&2
        stop=failed
        break
    fi
    sleep 1
done

if [ "$stop" = failed ]; then
    rc=1
elif [ -n "$stop" ]; then
    rc=$STOPPED_EXIT
else
    if [ "$restart" -gt 0 ] && [ -n "$storage" ] && \
        "${XTRA[@]}" study status "$storage/$name" --copy "$scratch/$name" >/dev/null 2>&1; then
        "${XTRA[@]}" study resume "$storage/$name" --copy "$scratch/$name" --address "$head_ip:$port" &
    elif [ -f "$out/study.toml" ] && [ "$restart" -gt 0 ]; then
        "${XTRA[@]}" study resume "$out" --address "$head_ip:$port" &
    else
        "${XTRA[@]}" study run "$@" --address "$head_ip:$port" &
    fi
    driver=$!
    while kill -0 "$driver" 2>/dev/null; do wait "$driver"; done
    wait "$driver"
    rc=$?
fi

for pid in "${ray_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
for pid in "${ray_pids[@]}"; do wait "$pid" 2>/dev/null; done
rm -rf "$scratch" "$ray_tmp"
echo "xtra: driver exit code $rc ($(date '+%F %T'))"
if [ "$stop" = USR1 ] && [ "$rc" != 0 ] && [ "$rc" != 2 ]; then  # 2: bad input, which a requeue cannot fix
    echo "xtra: requeueing job ${SLURM_JOB_ID} to continue the study"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
"""


def render(options: dict[str, str] | None = None, run_args: list[str] | None = None, xtra_cmd: str | None = None,
           ray_cmd: str | None = None, output: str | None = None) -> str:
    """The job script. No arguments: the shipped, generic ``scripts/slurm/study.sbatch``. ``options``
    (``parse_slurm``) become ``#SBATCH`` lines; ``run_args`` are baked in as the default arguments of
    ``xtra study run``; ``xtra_cmd`` / ``ray_cmd`` fix the commands (the submitting Python's)."""
    options = dict(options or {})
    lead = int(options.pop("signal", DEFAULT_SIGNAL_S))
    lines = [HEADER.rstrip("\n"), f"#SBATCH --signal=B:USR1@{lead}", f"#SBATCH --output={output or 'slurm-%j.out'}"]
    lines += [f"#SBATCH --{k}={v}" for k, v in options.items() if k not in NOT_SBATCH]
    lines.append(f"STOPPED_EXIT={STOPPED_EXIT}  # the driver's exit code when a signal stopped it with trials left")
    lines.append(f"export XTRA_STOP_GRACE_S=${{XTRA_STOP_GRACE_S:-{max(5, lead // 3)}}}  # for running trials to "
                 f"checkpoint after the warning")
    if xtra_cmd:
        lines.append(f"XTRA_CMD=${{XTRA_CMD:-{shlex.quote(xtra_cmd)}}}")
    if ray_cmd:
        lines.append(f"RAY_CMD=${{RAY_CMD:-{shlex.quote(ray_cmd)}}}")
    if run_args:
        lines.append(f"if [ $# -eq 0 ]; then set -- {shlex.join(run_args)}; fi")
    return "\n".join(lines) + "\n" + BODY


def python_commands() -> tuple[str, str]:
    """``xtra`` and ``ray`` as this Python runs them, so the job uses the environment that submitted it."""
    import sys

    ray = Path(sys.executable).with_name("ray")
    return (f"{shlex.quote(sys.executable)} -m xtra.cli.main",
            shlex.quote(str(ray)) if ray.is_file() else "ray")


def write_script(study_dir: Path, text: str) -> Path:
    path = Path(study_dir) / SLURM_DIR / SCRIPT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    path.chmod(0o755)
    return path


def sbatch(script: Path) -> str:
    """Submit ``script``; returns the job id. StudyError (one line) when sbatch is missing or refuses."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise StudyError("sbatch not found: submit from a Slurm login node (or --dry-run to only write the script)")
    res = subprocess.run([exe, "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise StudyError(f"sbatch {script}: {' '.join((res.stderr or res.stdout).split()) or f'exit {res.returncode}'}")
    return res.stdout.strip().split(";")[0]


def record_job(study_dir: Path, job_id: str, script: Path) -> None:
    path = Path(study_dir) / SLURM_DIR / JOBS
    jobs = read_json(path)
    jobs = jobs if isinstance(jobs, list) else []
    jobs.append({"job_id": job_id, "script": str(script), "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
    atomic_write_json(path, jobs)


def submitted_jobs(study_dir: Path) -> list[dict[str, Any]]:
    jobs = read_json(Path(study_dir) / SLURM_DIR / JOBS)
    return jobs if isinstance(jobs, list) else []


def job_record() -> dict[str, Any]:
    """What a run record keeps about the Slurm job running this driver ({} outside Slurm)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    return {"slurm": {"job_id": job, "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
                      "nodes": os.environ.get("SLURM_JOB_NODELIST"), "cluster": os.environ.get("SLURM_CLUSTER_NAME")}}


def job_state(job_id: str) -> dict[str, str]:
    """{"state", "reason", "restarts", "nodes"} of a Slurm job from scontrol (or sacct for a job the
    controller forgot); {"state": "unknown (...)"} in one line when Slurm cannot be asked."""
    exe = shutil.which("scontrol")
    if exe:
        try:
            res = subprocess.run([exe, "-o", "show", "job", str(job_id)], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.SubprocessError) as err:
            return {"state": f"unknown (scontrol: {type(err).__name__})"}
        fields: dict[str, str] = {}
        for item in res.stdout.split():
            key, sep, value = item.partition("=")
            if sep:
                fields.setdefault(key, value)
        if res.returncode == 0 and "JobState" in fields:
            return {"state": fields["JobState"], "reason": fields.get("Reason", "None"),
                    "restarts": fields.get("Restarts", "0"), "nodes": fields.get("NodeList", "")}
    exe = shutil.which("sacct")
    if exe:
        try:
            res = subprocess.run([exe, "-n", "-X", "-P", "-j", str(job_id), "-o", "State,NodeList"],
                                 capture_output=True, text=True, timeout=15)
            line = res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else ""
        except (OSError, subprocess.SubprocessError):
            line = ""
        if line:
            state, _, nodes = line.partition("|")
            return {"state": state.split()[0], "nodes": nodes}
    if not shutil.which("scontrol") and not shutil.which("sacct"):
        return {"state": "unknown (no scontrol or sacct here)"}
    return {"state": "unknown (Slurm no longer knows the job)"}


def status_line(study_dir: Path, runs: list[dict[str, Any]]) -> str | None:
    """`xtra study status`'s Slurm line: the study's latest job (submitted, or recorded by a driver
    running under Slurm) and its state now; None for a study never run under Slurm."""
    jobs = [(r.get("started") or "", r["slurm"]["job_id"]) for r in runs if isinstance(r.get("slurm"), dict)]
    jobs += [(j.get("submitted") or "", str(j.get("job_id"))) for j in submitted_jobs(study_dir) if j.get("job_id")]
    if not jobs:
        return None
    job_id = max(jobs)[1]
    info = job_state(job_id)
    extra = [f"{k} {info[k]}" for k in ("reason", "restarts", "nodes") if info.get(k) and info[k] != "None"]
    return f"slurm job {job_id}: {info['state']}" + (f" ({', '.join(extra)})" if extra else "")


# ---------------------------------------------------------------------------------------------
# The driver on SIGUSR1 / SIGTERM


@dataclass
class Stop:
    """The driver's stop signals. Before the Tune run, a signal is recorded (the runner starts nothing);
    while Ray is starting it stops that; inside the Tune run it starts a graceful stop
    (``xtra.studies.ray.stopping.GracefulStop``: the running trials checkpoint, then Tune stops), and a
    second signal at least ``ESCALATE_AFTER_S`` later (Slurm's SIGTERM at the limit) stops Tune at once."""

    ESCALATE_AFTER_S = 2.0  # scancel signals the driver and the job script at once: that pair is one stop

    signal: str | None = None  # the name of the first stop signal received
    in_fit: bool = False
    received_at: float | None = None
    note: str | None = None  # what the graceful stop achieved (GracefulStop)
    lost: str | None = None  # why the driver lost its study (``xtra.lease``), if it did
    _saved: dict[int, Any] = field(default_factory=dict)

    def lose_study(self, why: str) -> None:
        """The driver's lease was taken or could not be refreshed (``xtra.lease.StudyLock.on_lost``, from
        its heartbeat thread): stop the way a signal does, so running trials checkpoint where they are."""
        self.lost = why
        if self.received_at is None:
            self.signal, self.received_at = LOST_LEASE, time.monotonic()

    def _tune_handler(self) -> Any:
        tune = signal.getsignal(signal.SIGUSR1)
        return tune if callable(tune) and tune != self.handler else None

    def handler(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        escalate = self.received_at is not None and now - self.received_at >= self.ESCALATE_AFTER_S
        if self.received_at is None:
            self.signal, self.received_at = signal.Signals(signum).name, now
        if not self.in_fit:
            return  # before or after the run: the runner checks ``signal`` before it starts Ray
        if self._tune_handler() is None:  # Ray still starting: stop that
            raise KeyboardInterrupt
        if escalate:
            self.interrupt_tune()

    def claim(self) -> None:
        """Take SIGTERM back once Ray is up: ``ray.init`` installs Ray core's own handler, which logs the
        signal and ends the driver (exit 1, or 134) before any result is written."""
        if self._saved and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.handler)

    def interrupt_tune(self) -> None:
        """Tune's own Ctrl-C: no new trials, its state saved, ``fit`` returns."""
        tune = self._tune_handler()
        if tune is not None:
            tune(signal.SIGUSR1, None)

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        """Around the Ray Tune run: a stop signal stops the run; KeyboardInterrupt from one is absorbed."""
        self.in_fit = True
        try:
            yield
        except KeyboardInterrupt:
            if self.signal is None:
                raise
        finally:
            self.in_fit = False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """SIGUSR1 (Slurm's warning before the time limit) and SIGTERM (scancel, requeue, preemption, kill) stop
    a study the way Ctrl-C does. The previous handlers come back afterwards (Ray Tune's too). A no-op off
    the main thread (a notebook's worker thread cannot own signals)."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    sigs = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    for s in sigs[:2]:
        stop._saved[s] = signal.signal(s, stop.handler)
    stop._saved[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    try:
        yield stop
    finally:
        for s, h in stop._saved.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
