#!/usr/bin/env bash
# A throw-away SLURM (slurmctld, two slurmd, munged) on this host, for the SLURM tests.
#
#   tests/slurm/cluster.sh install        # apt-get install slurm-wlm and munge when missing (root)
#   tests/slurm/cluster.sh start DIR      # write DIR/slurm.conf, start the daemons, wait for idle
#   tests/slurm/cluster.sh stop DIR       # cancel jobs, stop the daemons started from DIR
#   tests/slurm/cluster.sh env DIR        # print the variables that client commands need
#
# Two nodes, each its own slurmd (`slurmd -N NAME`, own port, spool, log and pid file):
# `localhost` and a second name of this host (its hostname; SLURM_TEST_NODE2 to choose another).
# Both names resolve to this host, so a job's rendezvous address (its first node's name) does
# too, and nothing under /etc/hosts changes. Partition `debug` (SLURM_TEST_PARTITION) holds
# `localhost` only; partition `multi` (SLURM_TEST_MULTI_PARTITION) holds both, for multi-node
# jobs.
#
# Everything (config, munge key and socket, state, spool, logs, pid files) lives in DIR; nothing
# under /etc is changed. Client commands find the cluster through SLURM_CONF=DIR/slurm.conf.
# `start` is idempotent (a running cluster in DIR is reused); `stop` is safe to call twice.
set -euo pipefail

PARTITION=${SLURM_TEST_PARTITION:-debug}
MULTI_PARTITION=${SLURM_TEST_MULTI_PARTITION:-multi}
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-16817}
SLURMD_PORT=${SLURM_TEST_SLURMD_PORT:-16818} # the second node's slurmd listens on the next port
NODE1=localhost

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }

alive() { # alive PIDFILE: true if the pid file names a live process
	[[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_slurm() {
	local missing=()
	for cmd in slurmctld slurmd sbatch munged; do
		command -v "$cmd" >/dev/null || missing+=("$cmd")
	done
	if ((${#missing[@]} == 0)); then
		say "slurm and munge already installed ($(slurmctld -V))"
		return
	fi
	[[ $(id -u) == 0 ]] || die "${missing[*]} missing and not root: install slurm-wlm and munge (apt-get install slurm-wlm munge) or run as root"
	command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get: install slurm-wlm and munge by hand"
	say "installing slurm-wlm and munge (missing: ${missing[*]})"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends slurm-wlm munge
}

local_name() { # local_name NAME: true if NAME resolves to an address of this host
	local addr
	addr=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 {print $1}')
	[[ -n $addr ]] || return 1
	[[ $addr == 127.* ]] || hostname -I 2>/dev/null | tr ' ' '\n' | grep -qxF "$addr"
}

second_node() { # second_node: a name other than localhost that resolves to this host
	local name
	for name in ${SLURM_TEST_NODE2:-} "$(hostname -s 2>/dev/null)" "$(hostname)" \
		"$(hostname -f 2>/dev/null)"; do
		[[ -n $name && $name != "$NODE1" ]] && local_name "$name" && { echo "$name"; return; }
	done
	die "no second node name: this host's name ($(hostname)) does not resolve to one of its addresses; set SLURM_TEST_NODE2 to a name that does (not localhost)"
}

write_conf() { # write_conf DIR
	local dir=$1 mem node2
	node2=$(second_node)
	# RealMemory from what slurmd detects (MB), minus a margin so that the node is never drained
	# for "Low RealMemory".
	mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
	[[ -n $mem ]] || mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
	mem=$((mem * 9 / 10))
	cat >"$dir/slurm.conf" <<CONF
# Test cluster written by tests/slurm/cluster.sh; everything lives in $dir.
# Two slurmd on this host (slurmd -N $node2, slurmd -N $NODE1): %n is the node's name. $NODE1
# comes second: while the only node read so far is named localhost, SLURM takes every node
# name for that node ("Duplicated NodeHostName $node2").
ClusterName=dclstest
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
JobRequeue=1
MinJobAge=30
ReturnToService=2
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node2 NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + 1)) CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
NodeName=$NODE1 NodeAddr=127.0.0.1 Port=$SLURMD_PORT CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE1 Default=YES MaxTime=INFINITE State=UP
PartitionName=$MULTI_PARTITION Nodes=$NODE1,$node2 MaxTime=INFINITE State=UP
CONF
}

nodes() { # nodes DIR: the node names of the cluster in DIR, from its slurm.conf
	sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$1/slurm.conf"
}

start_cluster() { # start_cluster DIR
	local dir=$1
	[[ $(id -u) == 0 ]] || die "the test cluster runs its daemons as root; run as root"
	mkdir -p "$dir"/{munge,state,spool,log}
	chmod 700 "$dir" "$dir/munge"
	export SLURM_CONF=$dir/slurm.conf
	[[ -f $SLURM_CONF ]] || write_conf "$dir"

	if ! alive "$dir/munge/munged.pid"; then
		[[ -f $dir/munge/munge.key ]] || {
			dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
			chmod 600 "$dir/munge/munge.key"
		}
		munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
			--pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
			--seed-file="$dir/munge/munged.seed" ||
			die "munged did not start; see $dir/log/munged.log"
	fi
	if ! alive "$dir/slurmctld.pid"; then
		slurmctld -f "$SLURM_CONF" || die "slurmctld did not start; see $dir/log/slurmctld.log"
	fi
	local node all
	all=$(nodes "$dir" | paste -sd,)
	for node in $(nodes "$dir"); do
		mkdir -p "$dir/spool/$node"
		alive "$dir/slurmd.$node.pid" && continue
		slurmd -f "$SLURM_CONF" -N "$node" ||
			die "slurmd -N $node did not start; see $dir/log/slurmd.$node.log"
	done
	say "waiting for nodes $all to be idle"
	local state=""
	for _ in $(seq 60); do
		state=$(sinfo -h -N -n "$all" -o %t 2>/dev/null | sort -u | paste -sd, || true)
		[[ $state == idle ]] && break
		sleep 1
	done
	if [[ $state != idle ]]; then
		tail -n 20 "$dir"/log/*.log >&2 || true
		die "nodes $all are '${state:-unreachable}', not idle, after 60 s (logs above, in $dir/log)"
	fi
	say "cluster up: $(sinfo -h -o '%P %D %N %t %c CPUs %m MB' | paste -sd';')"
}

stop_pid() { # stop_pid NAME PIDFILE: SIGTERM, wait up to 20 s, then SIGKILL
	local name=$1 pidfile=$2 pid
	alive "$pidfile" || return 0
	pid=$(cat "$pidfile")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 40); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.5
	done
	say "$name (pid $pid) ignored SIGTERM for 20 s; killing it"
	kill -9 "$pid" 2>/dev/null || true
}

stop_cluster() { # stop_cluster DIR
	local dir=$1
	[[ -d $dir ]] || return 0
	export SLURM_CONF=$dir/slurm.conf
	if alive "$dir/slurmctld.pid"; then
		# Cancel every job and wait until their processes are gone, so that no job step
		# (slurmstepd and the training processes) survives the daemons.
		scancel --full --quiet --user=root 2>/dev/null || true
		for _ in $(seq 60); do
			[[ -z $(squeue -h -t RUNNING,COMPLETING,PENDING,REQUEUED,SUSPENDED -o %i 2>/dev/null) ]] && break
			sleep 0.5
		done
	fi
	local node
	for node in $(nodes "$dir" 2>/dev/null); do
		stop_pid "slurmd -N $node" "$dir/slurmd.$node.pid"
	done
	stop_pid slurmctld "$dir/slurmctld.pid"
	stop_pid munged "$dir/munge/munged.pid"
	say "cluster in $dir stopped"
}

case ${1:-} in
	install) install_slurm ;;
	start) [[ -n ${2:-} ]] || die "usage: $0 start DIR"; start_cluster "$(realpath -m "$2")" ;;
	stop) [[ -n ${2:-} ]] || die "usage: $0 stop DIR"; stop_cluster "$(realpath -m "$2")" ;;
	env) [[ -n ${2:-} ]] || die "usage: $0 env DIR"; echo "SLURM_CONF=$(realpath -m "$2")/slurm.conf" ;;
	*) die "usage: $0 install | start DIR | stop DIR | env DIR" ;;
esac
