#!/usr/bin/env bash
# Prepares one Jetson Orin (L4T r36.4.x or r36.5.x: JetPack 6.1 to 6.2.2) to run the
# glass-inspect image; docs/deploy.md, "A device, once". Run as root from a copy of deploy/;
# safe to run again.
#
#   sudo ./install-host.sh IMAGE:TAG [STAGE_PORT] [LINE_PORT] [CAMERA]
#   e.g. sudo ./install-host.sh registry.plant.local/glass-inspect:0.1.0 \
#            /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K5-if00-port0 /dev/ttyTHS1 /dev/video0
#   ./install-host.sh --check-l4t    only says whether this device's L4T release is supported
set -euo pipefail

die() { echo "install-host.sh: $*" >&2; exit 1; }

# The host releases the image runs on. It is built on L4T r36.4 (Dockerfile.jetson); an L4T
# container must match the host's major release (R36, JetPack 6), and within R36 it brings its
# own CUDA 12.6 and TensorRT 10.3, the host only the GPU driver: r36.4.x (JetPack 6.1, 6.2,
# 6.2.1) and r36.5.x (JetPack 6.2.2, CUDA and TensorRT unchanged). Not r36.2 / r36.3 (JetPack
# 6.0: a driver older than CUDA 12.6), nor R35 (JetPack 5) or R38 (JetPack 7). The file is
# overridable for the tests (tests/test_deploy.py).
supported_l4t="36.4 36.5"
nv_tegra_release=${GLASS_INSPECT_NV_TEGRA_RELEASE:-/etc/nv_tegra_release}
check_l4t() {
    local first release
    first=$(head -n 1 "$nv_tegra_release" 2>/dev/null) \
        || die "cannot read $nv_tegra_release: is this a Jetson with JetPack (L4T) installed?" \
               "The image runs on L4T r${supported_l4t// /.x or r}.x (JetPack 6.1 to 6.2.2)"
    # e.g. "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, ..."
    [[ $first =~ ^\#\ R([0-9]+)\ \(release\),\ REVISION:\ ([0-9]+)\.([0-9]+) ]] \
        || die "cannot tell the L4T release from $nv_tegra_release: '$first' (the image runs" \
               "on L4T r${supported_l4t// /.x or r}.x, JetPack 6.1 to 6.2.2)"
    release="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
    for ok in $supported_l4t; do
        if [ "${BASH_REMATCH[1]}.${BASH_REMATCH[2]}" = "$ok" ]; then
            echo "L4T r$release: supported"
            return 0
        fi
    done
    die "this device runs L4T r$release; the image (built on L4T r36.4: CUDA 12.6, TensorRT" \
        "10.3) runs on L4T r${supported_l4t// /.x or r}.x only (JetPack 6.1 to 6.2.2): an L4T" \
        "container must match the host's major release (R36 = JetPack 6). Flash this device" \
        "with one of those, or build the image from base images for its release" \
        "(docs/deploy.md, \"Which JetPack\")"
}
if [ "${1:-}" = "--check-l4t" ]; then
    check_l4t
    exit 0
fi

image=${1:?usage: install-host.sh IMAGE:TAG [STAGE_PORT] [LINE_PORT] [CAMERA]}
stage=${2:-/dev/ttyUSB0}
line=${3:-/dev/ttyTHS1}
camera=${4:-/dev/video0}
app_uid=10001  # the image's user (Dockerfile.jetson, APP_UID)
here=$(cd "$(dirname "$0")" && pwd)

check_l4t  # before anything is changed, and before root is asked for
[ "$(id -u)" -eq 0 ] || die "run it as root (sudo)"
docker compose version > /dev/null 2>&1 || die "Docker with the compose plugin is needed"
docker info --format '{{json .Runtimes}}' | grep -q '"nvidia"' \
    || die "Docker has no 'nvidia' runtime: install nvidia-container (apt) and run" \
           "'nvidia-ctk runtime configure --runtime=docker && systemctl restart docker'"

# The gpio group and the rule that hands it /dev/gpiochip*.
getent group gpio > /dev/null || groupadd --system gpio
install -m 0644 "$here/99-glass-inspect-gpio.rules" /etc/udev/rules.d/
udevadm control --reload
udevadm trigger --subsystem-match=gpio

# Folders: the head file and calibration (read by the container), the engine cache and the
# verdict journal (written by the container's user).
install -d -m 0755 /etc/glass-inspect /opt/glass-inspect
install -d -m 0755 /var/lib/glass-inspect
install -d -o "$app_uid" -g "$app_uid" -m 0750 /var/lib/glass-inspect/engines \
    /var/lib/glass-inspect/journal
if [ ! -e /etc/glass-inspect/head.toml ]; then
    install -m 0644 "$here/head.example.toml" /etc/glass-inspect/head.toml
    echo "wrote /etc/glass-inspect/head.toml from the example: edit it for this head"
fi

# What differs between devices, for compose.yaml; the previous settings are kept beside.
gid() { getent group "$1" | cut -d: -f3; }
env_file=/etc/glass-inspect/compose.env
[ -e "$env_file" ] && cp "$env_file" "$env_file.previous"
cat > "$env_file" <<SETTINGS
# glass-inspect on $(hostname): read by /opt/glass-inspect/compose.yaml (install-host.sh)
GLASS_INSPECT_IMAGE=$image
GPIO_GID=$(gid gpio)
DIALOUT_GID=$(gid dialout)
VIDEO_GID=$(gid video)
STAGE_PORT=$stage
LINE_PORT=$line
CAMERA=$camera
SETTINGS

install -m 0644 "$here/compose.yaml" "$here/compose.pinmux.yaml" /opt/glass-inspect/
install -m 0644 "$here/glass-inspect.service" /etc/systemd/system/glass-inspect.service
systemctl daemon-reload
systemctl enable glass-inspect.service
echo "ready: check /etc/glass-inspect/head.toml, then: systemctl start glass-inspect"
