#!/usr/bin/env bash
# make test-slurm: the SLURM tests (tests/slurm/test_slurm.py) against a real two-node SLURM.
#
# Installs slurm-wlm and munge with apt when they are missing (needs root), starts munged,
# slurmctld and two slurmd (nodes localhost and this host's name) from a temporary directory
# (tests/slurm/cluster.sh; partition debug: localhost, partition multi: both nodes), runs
# `pytest -m slurm tests/slurm` and stops the daemons again, whatever happens. On failure the
# temporary directory is kept (daemon logs, the sweeps' run directories and submitit logs) and
# named on stderr; KEEP=1 keeps it on success too. Arguments go to pytest (e.g. -k preempt).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY_VENV:-.venv/bin/python}
HERE=tests/slurm
LIMIT_S=${SLURM_TEST_LIMIT_S:-540} # the whole target stays under 10 minutes

[[ -x $PY ]] || { echo "run.sh: $PY not found; run \`make install\` first" >&2; exit 1; }
start=$(date +%s)
"$HERE/cluster.sh" install

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dcls-slurm.XXXXXX")
chmod 755 "$WORK"
TESTS_PID=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	# pytest and the sweep processes it started run in the process group of `timeout`: end
	# them first (after an interrupt they would otherwise keep polling a stopped cluster).
	if [[ -n $TESTS_PID ]] && kill -TERM -- "-$TESTS_PID" 2>/dev/null; then
		sleep 2
	fi
	"$HERE/cluster.sh" stop "$WORK/cluster" || rc=1
	if ((rc == 0)) && [[ -z ${KEEP:-} ]]; then
		rm -rf "$WORK"
	else
		if ((rc != 0)) && [[ -d $WORK/cluster/log ]]; then
			for f in "$WORK"/cluster/log/*.log; do
				echo "----- last lines of $f" >&2
				tail -n 15 "$f" >&2
			done
		fi
		echo "run.sh: kept $WORK (cluster logs: cluster/log; sweeps and submitit logs: tests/)" >&2
	fi
	echo "run.sh: $( ((rc == 0)) && echo passed || echo FAILED) in $(($(date +%s) - start)) s" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$HERE/cluster.sh" start "$WORK/cluster"
export SLURM_CONF=$WORK/cluster/slurm.conf
export SLURM_TEST_PARTITION=${SLURM_TEST_PARTITION:-debug}
export SLURM_TEST_MULTI_PARTITION=${SLURM_TEST_MULTI_PARTITION:-multi}
export DCLS_SLURM_REQUIRED=1
# `timeout` leads its own process group (pytest, the sweeps it starts): stopped as one.
timeout --kill-after=10 "$LIMIT_S" "$PY" -m pytest -q -rA --durations=0 -m slurm -p no:cacheprovider \
	--basetemp "$WORK/tests" "$HERE" "$@" &
TESTS_PID=$!
wait "$TESTS_PID"
TESTS_PID=""
