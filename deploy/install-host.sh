#!/usr/bin/env bash
# Prepares one Jetson Orin (JetPack 6.1 / 6.2) to run the glass-inspect image; docs/deploy.md,
# "A device, once". Run as root from a copy of deploy/; safe to run again.
#
#   sudo ./install-host.sh IMAGE:TAG [STAGE_PORT] [LINE_PORT] [CAMERA]
#   e.g. sudo ./install-host.sh registry.plant.local/glass-inspect:0.1.0 \
#            /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K5-if00-port0 /dev/ttyTHS1 /dev/video0
set -euo pipefail

image=${1:?usage: install-host.sh IMAGE:TAG [STAGE_PORT] [LINE_PORT] [CAMERA]}
stage=${2:-/dev/ttyUSB0}
line=${3:-/dev/ttyTHS1}
camera=${4:-/dev/video0}
app_uid=10001  # the image's user (Dockerfile.jetson, APP_UID)
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "install-host.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run it as root (sudo)"
grep -q "R36 (release), REVISION: 4" /etc/nv_tegra_release 2>/dev/null \
    || echo "warning: the image is built for L4T r36.4 (JetPack 6.1 / 6.2); this device has" \
            "$(head -n 1 /etc/nv_tegra_release 2>/dev/null || echo 'no /etc/nv_tegra_release')"
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
