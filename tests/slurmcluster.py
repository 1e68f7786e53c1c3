"""A real single-node Slurm cluster for the test session: munged, slurmctld and slurmd on this machine.

`slurm_cluster` (session-scoped) writes a private slurm.conf (one node: this host and its CPUs; state,
spool, logs and munge's socket in a temp dir; free ports), starts munged as the munge user and the
two Slurm daemons as root, exports ``SLURM_CONF`` so ``sbatch`` / ``squeue`` / ``scontrol`` (and the
jobs) talk to it, and waits until the node is idle. At the end it cancels what is left and stops
every process it started, jobs included (found by the private temp dir in their environment), so no
daemon outlives the session. When it cannot start (no Slurm installed: ``make slurm`` installs it as
root; not root; a daemon that will not come up) the tests that use it skip with one line.

The settings make a small cluster fast: the scheduler runs on every submit and requeue, a job's
batch step is killed 2 s after its SIGTERM (``KillWait``), no grace past the time limit
(``OverTimeLimit=0``), and a requeued job may start again at once.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from drivers import stop_processes

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue")
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def processes_with(marker: str) -> list[int]:
    """Pids (not this one) whose environment mentions ``marker``: the daemons, slurmstepd and the jobs."""
    me, out = os.getpid(), []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != me and _environ_has(int(proc.name), marker.encode()):
            out.append(int(proc.name))
    return out


@dataclass
class SlurmCluster:
    root: Path
    node: str
    cpus: int
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (sbatch, squeue, scontrol, scancel)."""
        res = subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: exit {res.returncode}: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ...); {} once the job is forgotten."""
        res = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        out: dict[str, str] = {}
        for item in res.stdout.split():
            key, sep, value = item.partition("=")
            if sep:
                out.setdefault(key, value)
        return out

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        """Poll until the job's state is one of ``states``; fail naming the state it was stuck in."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} never reached {'/'.join(states)}: {info.get('JobState')} "
                             f"({info.get('Reason')}); slurmctld.log: {self.log_tail('slurmctld.log')}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.root / "log" / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(none)"

    # -----------------------------------------------------------------------------------------
    # start and stop

    def _write_conf(self) -> None:
        log = self.root / "log"
        ctld_port, d_port = _free_port(), _free_port()
        lines = [
            "ClusterName=xtratest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={self.root / 'munge' / 'munge.socket'},cred_expire=5",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",  # also scheduled on every submit, end and requeue
            "ReturnToService=2",
            "JobRequeue=1",
            "SlurmdTimeout=10",
            "SlurmctldTimeout=10",
            "MessageTimeout=5",
            "InactiveLimit=0",
            "KillWait=2",
            "OverTimeLimit=0",
            "MinJobAge=7200",  # finished jobs stay visible to `scontrol show job` for the session (they are
            # queued at its start and checked at its end)
            "CompleteWait=0",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            f"SlurmdLogFile={log / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        d = self.root / "munge"
        d.mkdir(mode=0o700)
        key = d / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        for p in (d, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        cmd = ["runuser", "-u", "munge", "--", "munged", "--foreground", "--force", f"--socket={d / 'munge.socket'}",
               f"--key-file={key}", f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
               f"--seed-file={d / 'munged.seed'}", "--num-threads=2"]
        self._spawn(cmd, "munged")
        self._wait(lambda: (d / "munge.socket").exists(), "munged's socket")

    def _spawn(self, cmd: list[str], name: str) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True))

    def _wait(self, ready, what: str) -> None:  # noqa: ANN001
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0] if p.args[0] != 'runuser' else 'munged'} exited ({p.returncode}) "
                                       f"before {what}: {self.log_tail('slurmctld.log', 3)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S}s")
            time.sleep(0.2)

    def start(self) -> None:
        for sub in ("log", "state", "spool"):
            (self.root / sub).mkdir(parents=True)
        self.root.chmod(0o755)  # munged (as munge) must reach its directory
        self.env = {"SLURM_CONF": str(self.conf), "XTRA_TEST_SLURM": str(self.root)}
        self._write_conf()
        self._start_munge()
        self._spawn(["slurmctld", "-D", "-c", "-f", str(self.conf)], "slurmctld")
        self._wait(lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0, "slurmctld")
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", self.node], "slurmd")

        def idle() -> bool:
            state = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip()
            return state.startswith("idle")

        self._wait(idle, f"node {self.node} idle")

    def stop(self) -> None:
        """Cancel every job, stop the daemons, then anything still carrying this cluster's marker."""
        if self.procs and self.procs[0].poll() is None:
            self.run("scancel", "--full", "--user", "root", check=False)
        for p in reversed(self.procs):  # slurmd, slurmctld, munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p.stdout:
                p.stdout.close()
        marker = f"XTRA_TEST_SLURM={self.root}"
        left = stop_processes(lambda: processes_with(marker), term_grace=5)
        shutil.rmtree(self.root, ignore_errors=True)
        assert not left, f"processes of the test's Slurm cluster still running: {left}"


def why_not() -> str | None:
    """Why this machine cannot run the test cluster, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; `make slurm` installs it as root)"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons as root"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user (install the munge package)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="xtra-slurm-")), socket.gethostname(), os.cpu_count() or 1)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        detail = " ".join(str(err).split())[:300]
        cluster.stop()
        pytest.skip(f"the test Slurm cluster did not start: {detail}")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cluster.env.items():
            mp.setenv(key, value)
        try:
            yield cluster
        finally:
            cluster.stop()
