#!/usr/bin/env bash
# A single-node SLURM cluster on this host, for the SLURM tests and the SLURM benchmark.
#
#   tests/slurm/cluster.sh install        apt-get install slurm-wlm, slurmdbd, munge, mariadb (needs root)
#   tests/slurm/cluster.sh start DIR      write DIR/slurm.conf, start mariadb, munged, slurmdbd,
#                                         slurmctld and slurmd
#   tests/slurm/cluster.sh stop DIR       stop the daemons started into DIR (by their pid files)
#
# Accounting (slurmdbd on a private MariaDB) is part of it because submitit reads job states with
# sacct: without it a child killed by SLURM would never be seen as finished.
# Everything it writes (configs, state, database, logs, pid files, sockets) stays under DIR. After
# `start`, use the cluster with SLURM_CONF=DIR/slurm.conf in the environment.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v munged >/dev/null \
        && command -v mariadbd >/dev/null; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

# munge runs on its default socket, so one test cluster per host: this file names the running one.
ACTIVE=/tmp/hydra-llm-slurm.active

start_cluster() {
    local dir=$1 other
    if [ -f "$ACTIVE" ]; then
        other=$(cat "$ACTIVE")
        if [ -f "$other/munge/munged.pid" ] && kill -0 "$(cat "$other/munge/munged.pid")" 2>/dev/null; then
            echo "another test cluster runs from $other (stop it with: $0 stop $other)" >&2
            return 1
        fi
    fi
    mkdir -p "$dir"/{state,spool,log,munge,mysql}
    dir=$(cd "$dir" && pwd)
    local host cpus mem_mb db_port dbd_port
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    db_port=$(free_port)
    dbd_port=$(free_port)

    # MariaDB for the accounting database, on loopback only.
    mariadb-install-db --user=root --datadir="$dir/mysql/data" --auth-root-authentication-method=normal \
        >"$dir/log/mariadb-install.log" 2>&1
    cat >"$dir/mysql/init.sql" <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-test';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
    mariadbd --user=root --datadir="$dir/mysql/data" --socket="$dir/mysql/mysql.sock" \
        --pid-file="$dir/mysql/mariadbd.pid" --port="$db_port" --bind-address=127.0.0.1 \
        --init-file="$dir/mysql/init.sql" --log-error="$dir/log/mariadbd.log" \
        --innodb-buffer-pool-size=64M --skip-log-bin &
    wait_for "MariaDB" 60 test -S "$dir/mysql/mysql.sock"

    # munge: a key of our own, on munge's default socket (the SLURM client commands that talk to
    # slurmdbd only look there).
    dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
    chmod 400 "$dir/munge/munge.key"
    mkdir -p /run/munge
    munged --force --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"

    cat >"$dir/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm-test
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$dir/slurmdbd.conf"
    # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF.
    SLURM_CONF="$dir/slurm.conf" slurmdbd

    cat >"$dir/slurm.conf" <<CONF
ClusterName=hydrallm
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

    export SLURM_CONF="$dir/slurm.conf"
    wait_for "slurmdbd" 15 sacctmgr -i add cluster hydrallm
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    wait_for "slurmctld and slurmd" 60 node_ready
    wait_for "accounting (sacct)" 60 sacct -n -X -a -S now
    echo "$dir" >"$ACTIVE"
    echo "SLURM up: SLURM_CONF=$SLURM_CONF"
}

node_ready() {
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

# wait_for NAME SECONDS COMMAND...: retry COMMAND every second; on time-out, stop and fail.
wait_for() {
    local name=$1 seconds=$2
    shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "$name did not come up within $seconds s; logs in $dir/log" >&2
    stop_cluster "$dir"
    return 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_cluster() {
    local dir pidfile pid
    dir=$(cd "$1" 2>/dev/null && pwd || echo "$1")
    # Cancel what still runs (e.g. children of a killed sweeper) so no job step outlives the cluster.
    if [ -f "$dir/slurm.conf" ]; then
        SLURM_CONF="$dir/slurm.conf" timeout 10 scancel --full --user="$(id -un)" >/dev/null 2>&1 || true
        sleep 1
    fi
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/slurmdbd.pid" "$dir/mysql/mariadbd.pid" \
        "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    if [ -f "$ACTIVE" ] && [ "$(cat "$ACTIVE")" = "$dir" ]; then rm -f "$ACTIVE"; fi
}

case $cmd in
    install) install_packages ;;
    start) start_cluster "${2:?DIR}" ;;
    stop) stop_cluster "${2:?DIR}" ;;
    *) echo "unknown command: $cmd" >&2; exit 2 ;;
esac
