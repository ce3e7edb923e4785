#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, CPU only, for the real-SLURM test of `implicit-eval sweep --executor
# slurm` (tests/harness/test_executors.py). Root only; no systemd needed: the daemons are started directly.
#
#   .ci/slurm.sh start    install Debian's packages if missing, write /etc/slurm/slurm.conf, start munged, slurmctld
#                         and slurmd, wait until `sinfo` shows this node idle
#   .ci/slurm.sh stop     stop the three daemons this script started (by their pid files)
#
# It never touches a slurm.conf it did not write: on a machine that already has one, it stops with a message.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by implicit-ssm-eval .ci/slurm.sh"
NODE=$(hostname -s)
PIDS=/run/implicit-ssm-eval-slurm
die() { echo ".ci/slurm.sh: $*" >&2; exit 1; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || die "slurmctld/slurmd/munged are not installed and there is no apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: not replacing a real cluster's configuration"
    fi
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # MB, a margin below what is free
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=implicit-ssm-eval-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120): the requeue test needs less.
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups or systemd in a container: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
# CPUs are the only consumable resource: array tasks asking no memory run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# scancel: SIGTERM, then SIGKILL 5 s later (the default 30 s only slows the test down).
KillWait=5
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # one already runs (started by the package)
        return
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$PIDS/munged.pid"
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

wait_idle() {
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        [ "$state" = idle ] && { echo ".ci/slurm.sh: node $NODE idle (partition ci, $(nproc) CPUs)"; return; }
        sleep 1
    done
    die "node $NODE is '${state:-unreachable}' after 60 s (see /var/log/slurm/slurmctld.log and slurmd.log)"
}

start() {
    [ "$(id -u)" = 0 ] || die "start needs root (it installs packages and starts daemons)"
    if [ -s "$PIDS/slurmctld.pid" ] && kill -0 "$(cat "$PIDS/slurmctld.pid")" 2>/dev/null; then
        wait_idle
        return
    fi
    install
    mkdir -p "$PIDS"
    write_conf
    start_munge
    /usr/sbin/slurmctld
    /usr/sbin/slurmd
    wait_idle
}

stop() {
    for daemon in slurmd slurmctld munged; do
        local pid_file="$PIDS/$daemon.pid"
        [ -s "$pid_file" ] || continue
        local pid
        pid=$(cat "$pid_file")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        rm -f "$pid_file"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: .ci/slurm.sh start|stop" ;;
esac
