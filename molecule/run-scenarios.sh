#!/usr/bin/env bash
# Run the molecule scenarios (default: "default" then "mesh") in podman containers and print each
# one's wall time. On a failure, print the tail of the agent's (and the Unit emulator's) journal
# from every container of that scenario before destroying it. Exit status: failed scenarios.
# Needs molecule/prepare-host.sh to have run on this machine:
#     molecule/prepare-host.sh && molecule/run-scenarios.sh [SCENARIO...]
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${UNIT_P2P_MOLECULE_CACHE:-/var/cache/unit-p2p-molecule}"
if [[ ! -f $CACHE/env.sh ]]; then
    echo "run-scenarios.sh: $CACHE/env.sh is missing; run molecule/prepare-host.sh first" >&2
    exit 2
fi
# shellcheck source=/dev/null
source "$CACHE/env.sh"
# molecule finds molecule/<scenario>/molecule.yml under the working directory
cd "$REPO" || exit 2

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(default mesh)

containers_of() {  # instances are named unit-p2p-<scenario>[-N] in molecule/<scenario>/molecule.yml
    podman ps -a --format '{{.Names}}' --filter "name=^unit-p2p-$1"
}

print_journals() {
    local c
    for c in $(containers_of "$1"); do
        echo "----- $c: journalctl -u unit-p2p -n 80 -----"
        podman exec "$c" journalctl -u unit-p2p -n 80 --no-pager 2>&1
        echo "----- $c: journalctl -u unit-emulator -n 20 -----"
        podman exec "$c" journalctl -u unit-emulator -n 20 --no-pager 2>&1
    done
}

declare -A took result
failed=0
for s in "${scenarios[@]}"; do
    log="$CACHE/logs/molecule-$s.log"
    mkdir -p "$CACHE/logs"
    rm -f "$log"
    echo "==> molecule test -s $s   (Ansible log with timestamps: $log)"
    export UNIT_P2P_MOLECULE_RESULTS="$CACHE/logs/timings-$s.json"
    rm -f "$UNIT_P2P_MOLECULE_RESULTS"
    start=$(date +%s)
    # leftovers of an interrupted run; then the test without its final destroy, so that a failure
    # can still be looked at inside the containers
    molecule destroy -s "$s" >/dev/null 2>&1
    ANSIBLE_LOG_PATH="$log" ANSIBLE_FORCE_COLOR=0 molecule test -s "$s" --destroy=never
    rc=$?
    if ((rc != 0)); then
        echo "==> scenario $s FAILED (rc $rc); the agents' journals:"
        print_journals "$s"
        failed=$((failed + 1))
        result[$s]=FAILED
    else
        result[$s]=passed
    fi
    molecule destroy -s "$s" >/dev/null 2>&1 || echo "run-scenarios.sh: molecule destroy -s $s failed" >&2
    took[$s]=$(($(date +%s) - start))
    echo "==> scenario $s: ${result[$s]} in ${took[$s]} s"
    [[ -s $UNIT_P2P_MOLECULE_RESULTS ]] && echo "==> $s timings: $(tr -d ' \n' <"$UNIT_P2P_MOLECULE_RESULTS")"
done

echo "==> summary"
for s in "${scenarios[@]}"; do
    printf '    %-8s %-7s %4d s\n' "$s" "${result[$s]}" "${took[$s]}"
done
exit "$failed"
