#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (root) to run the molecule scenarios in podman containers.
# Idempotent: every step checks what is already there and prints its own wall time.
# Everything it builds lives under $UNIT_P2P_MOLECULE_CACHE (default /var/cache/unit-p2p-molecule);
# the environment for run-scenarios.sh is written to $UNIT_P2P_MOLECULE_CACHE/env.sh.
# Why each piece is needed here is recorded in docs/molecule.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${UNIT_P2P_MOLECULE_CACHE:-/var/cache/unit-p2p-molecule}"
BASE_IMAGE="${UNIT_P2P_BASE_IMAGE:-localhost/unit-p2p-base:bookworm}"
# The host's interpreter builds the venv and the wheels; the containers run Debian 12's python3 (3.11),
# so the host must be a CPython 3.11 too or the cp311 wheels would not install inside.
PYTHON="${UNIT_P2P_HOST_PYTHON:-python3}"
# cryptography: the mesh scenario makes its test CA and certificate bundles on the controller
# (molecule/mesh/files/make_bundle.py). ansible-core depends on it too; named so that it stays.
MOLECULE_REQS=("molecule==26.10.0" "molecule-plugins[podman]==26.10.12" "ansible-core>=2.19,<2.20"
               "cryptography>=42")
ANSIBLE_BUNDLE="ansible==12.3.0"
# Collections taken from the ansible bundle: containers.podman (molecule-plugins' podman playbooks and
# the podman connection plugin). The role and the scenarios use ansible.builtin only.
BUNDLED_COLLECTIONS=(containers/podman)
# netavark/aardvark-dns: podman's network backend with DNS between containers (only Recommends of
# podman, and podman falls back to CNI without them). iptables: netavark 1.4 runs the `iptables`
# program for every container network and is only a Suggests of podman, so --no-install-recommends
# leaves it out. conmon: podman's container monitor (a Depends, named so the check below is complete).
# gcc/python3-dev/libgmp-dev: fastecdsa builds from source into the wheelhouse here, on the host.
# python3-venv: when python3 is Debian's own.
APT_PACKAGES=(podman conmon runc netavark aardvark-dns iptables debootstrap gcc python3-dev python3-venv
              libgmp-dev)
# Programs podman execs while it starts a container, and where Debian 12 puts them (podman looks
# for its network helpers in helper_binaries_dir, not on PATH).
HELPER_DIRS=(/usr/local/libexec/podman /usr/local/lib/podman /usr/libexec/podman /usr/lib/podman)
NEEDED_PROGRAMS=(podman conmon runc netavark aardvark-dns iptables ip6tables debootstrap)

step_start=0
step() { step_start=$(date +%s%N); printf '==> %s\n' "$*"; }
done_step() {
    local ms=$((($(date +%s%N) - step_start) / 1000000))
    printf '    %s (%d.%01d s)\n' "${1:-done}" $((ms / 1000)) $((ms % 1000 / 100))
}

# Noisy tools (pip, apt) write to a log per step; only a failure shows their output.
quiet() {
    local log="$CACHE/logs/$1.log"; shift
    mkdir -p "$CACHE/logs"
    "$@" >"$log" 2>&1 || { echo "prepare-host.sh: failed: $*" >&2; tail -n 40 "$log" >&2; return 1; }
}

if [[ $EUID -ne 0 ]]; then
    echo "prepare-host.sh: must run as root (rootful podman, debootstrap, apt)" >&2
    exit 1
fi
mkdir -p "$CACHE"

# ---------------------------------------------------------------------------------------------
step "apt packages: ${APT_PACKAGES[*]}"
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    quiet apt apt-get -o DPkg::Lock::Timeout=600 update
    quiet apt apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
    done_step "installed ${missing[*]}"
else
    done_step "already installed"
fi

# ---------------------------------------------------------------------------------------------
step "programs podman runs: ${NEEDED_PROGRAMS[*]}"
absent=()
for prog in "${NEEDED_PROGRAMS[@]}"; do
    found=$(PATH="$PATH:/usr/sbin:/sbin" command -v "$prog" || true)
    for dir in "${HELPER_DIRS[@]}"; do
        [[ -z $found && -x $dir/$prog ]] && found=$dir/$prog
    done
    [[ -n $found ]] || absent+=("$prog")
done
if ((${#absent[@]})); then
    echo "prepare-host.sh: missing programs podman needs: ${absent[*]} (apt-get install ${absent[*]})" >&2
    exit 1
fi
done_step "all present"

# ---------------------------------------------------------------------------------------------
step "containers.conf"
# podman's default nofile=1048576 is above this VM's hard limit and the container would not start;
# crun refuses the hybrid cgroup layout, so runc + cgroupfs.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
[[ $nofile == unlimited ]] && nofile=1048576
[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
conf="$CACHE/containers.conf"
new_conf=$(cat <<CONF
# written by molecule/prepare-host.sh
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
# explicit: podman stays on CNI when it first ran before netavark was installed
network_backend = "netavark"
CONF
)
if [[ -f $conf && "$(cat "$conf")" == "$new_conf" ]]; then
    done_step "unchanged: $conf"
else
    printf '%s\n' "$new_conf" >"$conf"
    done_step "wrote $conf"
fi
export CONTAINERS_CONF="$conf"

# ---------------------------------------------------------------------------------------------
# The Debian mirror this machine's apt already uses: deb822 sources first, then the one-line format.
mirror_for() {  # $1: regex the URI must (not) match, e.g. 'security' with $2=exclude|include
    local want=$1 mode=$2 uri
    uri=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
             grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                 sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}'; } |
           { if [[ $mode == include ]]; then grep -E "$want"; else grep -vE "$want"; fi; } |
           grep -E '^https?://' | head -n1 || true)
    printf '%s' "$uri"
}

step "base image $BASE_IMAGE"
tarball="$CACHE/unit-p2p-base-bookworm.tar.gz"
if podman image exists "$BASE_IMAGE"; then
    done_step "image exists"
else
    if [[ ! -s $tarball ]]; then
        mirror=$(mirror_for security exclude)
        security=$(mirror_for security include)
        if [[ -z $mirror ]]; then
            echo "prepare-host.sh: no http(s) Debian mirror found in /etc/apt/sources.list(.d)" >&2
            exit 1
        fi
        [[ -n $security ]] || security="${mirror%/debian}/debian-security"
        echo "    debootstrap from $mirror (security: $security)"
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        # debootstrap mounts proc/sys inside the tree; never let rm walk into them
        trap 'grep -o " $rootfs/[^ ]*" /proc/mounts | sort -r | xargs -r umount -l;
              rm -rf --one-file-system "$rootfs"' EXIT
        # python3-venv is in the image so that the role's virtualenv works without reaching a mirror.
        debootstrap --variant=minbase \
            --include=python3,python3-apt,python3-venv,systemd,systemd-sysv,dbus,iproute2,procps,sudo,ca-certificates \
            bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
            { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
        chroot "$rootfs" apt-get clean
        # Empty lists with an old mtime: otherwise Ansible's apt module thinks the cache is fresh,
        # skips the update and finds no packages.
        find "$rootfs/var/lib/apt/lists" -mindepth 1 -delete
        mkdir -p "$rootfs/var/lib/apt/lists/partial"
        touch -d @0 "$rootfs/var/lib/apt/lists"
        rm -f "$rootfs/etc/apt/sources.list"
        cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        # Units that need real hardware or a console and only fail (or hang boot) in a container.
        for unit in getty@tty1.service console-getty.service systemd-udevd.service \
                    systemd-udev-trigger.service systemd-logind.service systemd-remount-fs.service; do
            ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
        done
        # Each container must make up its own machine id at first boot.
        : >"$rootfs/etc/machine-id"
        rm -f "$rootfs/var/lib/dbus/machine-id"
        tar -C "$rootfs" --numeric-owner -czf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf --one-file-system "$rootfs"
        trap - EXIT
    fi
    quiet import podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' \
        --change 'ENV container=podman' "$tarball" "$BASE_IMAGE"
    done_step "imported $tarball ($(du -h "$tarball" | cut -f1))"
fi

# ---------------------------------------------------------------------------------------------
step "molecule venv"
venv="$CACHE/venv"
stamp="$venv/.unit-p2p-reqs"
want="$($PYTHON -c 'import sys; print(sys.version_info[:2])') setuptools>=68 ${MOLECULE_REQS[*]}"
if [[ -x $venv/bin/molecule && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    done_step "up to date"
else
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
        echo "prepare-host.sh: $PYTHON is not CPython 3.11 (the containers' Debian 12 python)" >&2
        exit 1
    }
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    # setuptools here: the agent wheel is built without build isolation (8 s -> 1 s)
    quiet venv "$venv/bin/pip" install --upgrade pip wheel "setuptools>=68"
    quiet venv "$venv/bin/pip" install "${MOLECULE_REQS[@]}"
    printf '%s' "$want" >"$stamp"
    # molecule shells out to ansible-config, so its venv must be on PATH even for --version
    done_step "$(NO_COLOR=1 PATH="$venv/bin:$PATH" "$venv/bin/molecule" --version | awk 'NR == 1')"
fi

# ---------------------------------------------------------------------------------------------
step "collections from $ANSIBLE_BUNDLE (no Galaxy)"
colls="$CACHE/collections"
stamp="$colls/.unit-p2p-bundle"
if [[ -f $stamp && "$(cat "$stamp")" == "$ANSIBLE_BUNDLE ${BUNDLED_COLLECTIONS[*]}" ]]; then
    done_step "up to date"
else
    dl="$CACHE/download"
    mkdir -p "$dl"
    quiet collections "$venv/bin/pip" download --no-deps "$ANSIBLE_BUNDLE" -d "$dl"
    wheel=$(ls "$dl"/ansible-"${ANSIBLE_BUNDLE#ansible==}"-*.whl)
    rm -rf "$colls"
    mkdir -p "$colls"
    patterns=()
    for c in "${BUNDLED_COLLECTIONS[@]}"; do patterns+=("ansible_collections/$c/*"); done
    (cd "$colls" && "$venv/bin/python" - "$wheel" "${patterns[@]}" <<'PY'
import fnmatch, sys, zipfile
wheel, patterns = sys.argv[1], sys.argv[2:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if any(fnmatch.fnmatch(n, p) for p in patterns)]
    z.extractall(".", names)
print(f"    extracted {len(names)} files")
PY
    )
    printf '%s' "$ANSIBLE_BUNDLE ${BUNDLED_COLLECTIONS[*]}" >"$stamp"
    done_step "$(du -sh "$colls" | cut -f1) in $colls"
fi

# ---------------------------------------------------------------------------------------------
step "agent wheel + wheelhouse"
# The agent wheel is rebuilt from this checkout on every run; the dependency wheels are cached and
# only missing ones are built (fastecdsa compiles here, on the host, never inside a container).
wheels="$CACHE/wheels"
wheelhouse="$CACHE/wheelhouse"
# emptied, not recreated: running containers bind-mount these directories
mkdir -p "$wheels" "$wheelhouse"
rm -f "$wheels"/*.whl
quiet wheels "$venv/bin/pip" wheel --no-deps --no-build-isolation "$REPO" -w "$wheels"
agent_wheel=$(ls "$wheels"/unit_p2p-*.whl)
# Offline resolution first (2 s): only when the cached wheelhouse no longer satisfies the agent's
# requirements does pip go to the index and build what is missing.
if ! "$venv/bin/pip" install -q --dry-run --ignore-installed --no-index --find-links "$wheelhouse" \
        "$agent_wheel" >/dev/null 2>&1; then
    quiet wheels "$venv/bin/pip" wheel --find-links "$wheelhouse" -w "$wheelhouse" "$agent_wheel"
    rm -f "$wheelhouse"/unit_p2p-*.whl
fi
# pip picked wheels for the host's glibc; one tagged for a newer manylinux than the containers'
# glibc would not install there (sdists built here, like fastecdsa, are linux_x86_64 cp311: fine).
glibc=$(podman run --rm --network none "$BASE_IMAGE" ldd --version | awk 'NR == 1 {print $NF}')
for w in "$wheelhouse"/*manylinux*.whl; do
    [[ -e $w ]] || continue
    for tag in $(basename "$w" .whl | tr '.' '\n' | grep -oE 'manylinux_[0-9]+_[0-9]+' || true); do
        v=${tag#manylinux_}; v=${v/_/.}
        if [[ "$(printf '%s\n%s\n' "$v" "$glibc" | sort -V | tail -n1)" != "$glibc" ]]; then
            echo "prepare-host.sh: $(basename "$w") needs glibc $v > $glibc" >&2
            exit 1
        fi
    done
done
done_step "$(basename "$agent_wheel") + $(ls "$wheelhouse" | wc -l) wheels"

# ---------------------------------------------------------------------------------------------
cat >"$CACHE/env.sh" <<ENV
# written by molecule/prepare-host.sh; sourced by molecule/run-scenarios.sh
export UNIT_P2P_MOLECULE_CACHE="$CACHE"
export CONTAINERS_CONF="$conf"
export PATH="$venv/bin:\$PATH"
export ANSIBLE_COLLECTIONS_PATH="$REPO:$colls"
export UNIT_P2P_BASE_IMAGE="$BASE_IMAGE"
export UNIT_P2P_AGENT_WHEEL="$agent_wheel"
export UNIT_P2P_WHEELHOUSE="$wheelhouse"
ENV
echo "==> environment: $CACHE/env.sh"
