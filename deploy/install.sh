#!/usr/bin/env bash
# Installs the dwarfstar binary and a systemd unit that runs it as a mesh node.
#
#   deploy/install.sh [--user] (--mesh | --join TOKEN) [--model FILE] [--models-dir DIR]
#                     [--http-addr HOST:PORT] [--api-key KEY] [--bin FILE] [--root DIR] [--no-start]
#
# --mesh        this machine starts the mesh: the daemon makes the join secret on first start, in
#               its state folder, and prints the join token (journalctl -u dwarfstar | grep join).
# --join TOKEN  this machine joins the mesh whose first node printed TOKEN. The token holds the
#               secret: it is written to a file only its owner reads (root for a system unit),
#               which systemd hands the service as a credential (LoadCredential), and never put
#               on a command line.
# --model FILE  this node coordinates FILE and serves the API (else it takes a share of what the
#               coordinator loads, finding files in --models-dir).
# --user        a user unit (~/.config/systemd/user, binary in ~/.local/bin, no root needed)
#               instead of a system one (/etc/systemd/system, binary in /usr/local/bin).
# --bin FILE    the binary to install [default: target/release/dwarfstar, built if missing].
# --root DIR    install under DIR (a staging root; implies --no-start).
# --no-start    write the files only; do not reload, enable and start the unit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

user=0 mode="" token="" model="" models_dir="" http_addr="" api_key="" bin="" root="" start=1
die() { echo "install.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --user) user=1; shift ;;
        --mesh) mode=mesh; shift ;;
        --join) mode=join; token="${2:-}"; shift 2 || die "--join needs a token" ;;
        --model) model="${2:-}"; shift 2 || die "--model needs a file" ;;
        --models-dir) models_dir="${2:-}"; shift 2 || die "--models-dir needs a folder" ;;
        --http-addr) http_addr="${2:-}"; shift 2 || die "--http-addr needs HOST:PORT" ;;
        --api-key) api_key="${2:-}"; shift 2 || die "--api-key needs a key" ;;
        --bin) bin="${2:-}"; shift 2 || die "--bin needs a file" ;;
        --root) root="${2:-}"; start=0; shift 2 || die "--root needs a folder" ;;
        --no-start) start=0; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ -n "$mode" ]] || die "give --mesh (first machine) or --join TOKEN (the others)"
[[ "$mode" != join || "$token" == dsj1.* ]] || die "that is not a join token (it starts with dsj1.)"
[[ $user -eq 1 || -n "$root" || $(id -u) -eq 0 ]] || die "a system unit needs root (or use --user)"
if [[ -n "$model" ]]; then
    [[ -f "$model" ]] || die "no model file $model"
    model=$(cd "$(dirname "$model")" && pwd)/$(basename "$model")
    models_dir=${models_dir:-$(dirname "$model")}
fi
[[ -z "$models_dir" ]] || models_dir=$(cd "$models_dir" && pwd) || die "no folder $models_dir"

if [[ -z "$bin" ]]; then
    bin="$here/target/release/dwarfstar"
    [[ -x "$bin" ]] || (cd "$here" && cargo build --release -p dwarfstar)
fi
[[ -x "$bin" ]] || die "no executable $bin"

if [[ $user -eq 1 ]]; then
    home=${HOME:?}
    bin_dst="$root$home/.local/bin/dwarfstar"
    conf_dir="$root$home/.config/dwarfstar"
    unit_dir="$root$home/.config/systemd/user"
    systemctl=(systemctl --user)
else
    bin_dst="$root/usr/local/bin/dwarfstar"
    conf_dir="$root/etc/dwarfstar"
    unit_dir="$root/etc/systemd/system"
    systemctl=(systemctl)
fi
token_file="$conf_dir/join-token"

install -D -m 0755 "$bin" "$bin_dst"
install -d -m 0755 "$unit_dir"
install -d -m 0700 "$conf_dir"

# The daemon's flags. The token travels as a credential file; the secret a --mesh node makes
# stays in its state folder.
args=(serve)
if [[ $mode == join ]]; then
    (umask 077 && printf '%s\n' "$token" >"$token_file.tmp" && mv "$token_file.tmp" "$token_file")
    chmod 0600 "$token_file"
    args+=(--join-file '${CREDENTIALS_DIRECTORY}/join-token')
else
    args+=(--mesh)
fi
args+=(--state-dir '${STATE_DIRECTORY}')
[[ -z "$models_dir" ]] || args+=(--models-dir "$models_dir")
[[ -z "$model" ]] || args+=(--model "$model")
[[ -z "$http_addr" ]] || args+=(--http-addr "$http_addr")
if [[ -n "$api_key" ]]; then
    (umask 077 && printf 'DWARFSTAR_API_KEYS=%s\n' "$api_key" >"$conf_dir/env")
fi
exec_start="${bin_dst#"$root"} ${args[*]}"
credential=""
[[ $mode != join ]] || credential="LoadCredential=join-token:${token_file#"$root"}"
if [[ $user -eq 1 ]]; then
    identity="" wanted=default.target
else
    identity="DynamicUser=yes" wanted=multi-user.target
fi

cat >"$unit_dir/dwarfstar.service" <<EOF
# Written by deploy/install.sh: a DwarfStar mesh node ($mode).
[Unit]
Description=DwarfStar mesh node (OpenAI-compatible API)
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart=$exec_start
$credential
EnvironmentFile=-${conf_dir#"$root"}/env
Environment=DWARFSTAR_LOG=info
$identity
StateDirectory=dwarfstar
# SIGTERM lets running requests finish.
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
LimitNOFILE=65536
NoNewPrivileges=yes
PrivateTmp=yes
# Netlink: the mesh lists the interfaces it listens on; UDP multicast: mDNS discovery.
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
LockPersonality=yes

[Install]
WantedBy=$wanted
EOF

echo "installed $bin_dst and $unit_dir/dwarfstar.service"
[[ $mode != join ]] || echo "the join token is in $token_file (mode 0600)"
if [[ $start -eq 1 ]]; then
    "${systemctl[@]}" daemon-reload
    "${systemctl[@]}" enable --now dwarfstar.service
    if [[ $mode == mesh ]]; then
        echo "started; the join token for the other machines:"
        scope=""
        [[ $user -eq 0 ]] || scope="--user "
        echo "  journalctl ${scope}-u dwarfstar | grep 'dwarfstar join'"
    fi
fi
