#!/bin/busybox sh
# PID 1 of the smartwork-vdi demo desktop (packed into its initramfs by images/demo.py).
#
# Its whole job is a screen a person (or a test) recognises at a glance through VNC: a big banner, the
# desktop's label from the kernel command line, its host name, and what the image's Ansible role wrote
# on its disk (/dev/vda, a provisioned Debian root: /etc/smartwork-image, /etc/issue), then a shell.
# The Debian root is mounted, not booted: systemd would take about a minute under TCG.
# It must never exit: when PID 1 exits the kernel panics and the screen shows a crash dump instead.

/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Keep late kernel messages from scribbling over the banner.
dmesg -n 1
# The label may contain '*' or '?'; word splitting of the command line must not glob.
set -f

# Value of NAME=VALUE on the kernel command line (parameters with a dot never reach init's environment).
cmdline_value() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) echo "${word#*=}"; return ;; esac
    done
}

# The driver URL-quotes the label so spaces and non-ASCII survive the command line; control characters
# are dropped so a label cannot move the cursor or recolour the screen.
decode_label() {
    raw=$(cmdline_value vdi.label)
    [ -n "$raw" ] && httpd -d "$raw" | tr -d '\000-\037\177'
}

# Insert the modules the image needs, in dependency order (busybox insmod does not resolve dependencies).
load_modules() {
    while read -r module; do
        insmod "/lib/modules/$module" || return 1
    done < /etc/modules.order
}

# virtio_blk probes asynchronously, so the device node may appear a moment after insmod returns.
wait_for_disk() {
    tries=0
    while [ ! -b /dev/vda ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 100 ] && return 1
        sleep 0.1
    done
}

mount_disk() {
    if load_modules && wait_for_disk && mount -t ext4 /dev/vda /mnt/disk; then
        echo "mounted, marker: $(cat /mnt/disk/etc/smartwork-image 2>/dev/null || echo missing)"
    else
        echo "not mounted"
    fi
}

# How many times this desktop's own disk has booted: a kept (dedicated) desktop counts up across restarts,
# a fresh overlay starts again at 1, so a person or a test sees whether writes survived. Synced at once:
# a desktop may be powered off without a clean shutdown.
count_boot() {
    grep -q ' /mnt/disk ' /proc/mounts || { echo "none"; return; }
    count=$(cat /mnt/disk/boot-count 2>/dev/null)
    case "$count" in ''|*[!0-9]*) count=0 ;; esac
    count=$((count + 1))
    echo "$count" > /mnt/disk/boot-count && sync && echo "$count"
}

# A file of the mounted Debian root, or nothing when the disk did not mount.
disk_file() {
    grep -q ' /mnt/disk ' /proc/mounts && cat "/mnt/disk/$1" 2>/dev/null
}

# The role's /etc/issue without agetty's escapes (\n, \l, ...), which only a getty expands.
issue_text() {
    disk_file etc/issue | sed -e 's/\\[a-zA-Z]//g' -e 's/[[:space:]]*$//' | grep -v '^$' | tr -d '\000-\010\013-\037\177'
}

show_screen() {
    # White on blue, cursor home, clear: the Linux console clears with the current background colour.
    printf '\033[0;37;44m\033[H\033[2J\n\033[1;37m'
    while IFS= read -r line; do printf '   %s\n' "$line"; done < /etc/banner
    printf '\n\033[1;33m   Desktop : %s\033[0;37;44m\n' "$LABEL"
    printf '   Host    : %s\n' "$(hostname)"
    printf '   Image   : %s\n' "${ROOT_IMAGE:-demo $VERSION}"
    printf '   System  : Debian %s, provisioned by Ansible\n' "${DEBIAN:-?}"
    printf '   Disk    : /dev/vda %s\n' "$DISK"
    printf '   Boots   : %s\n\n' "$BOOTS"
    printf '%s\n' "$ISSUE" | while IFS= read -r line; do [ -z "$line" ] || printf '   %s\n' "$line"; done
}

# Tests and the admin console wait for this line on the serial console instead of sleeping.
report() {
    echo "smartwork-vdi: $*" > /dev/ttyS0 2>/dev/null
}

# The input device of the ACPI power button (loaded with the disk's modules: button, evdev); a subshell
# so that globbing is on only here.
power_button_device() (
    set +f
    tries=0
    while [ "$tries" -lt 20 ]; do
        for name in /sys/class/input/input*/name; do
            [ "$(cat "$name" 2>/dev/null)" = "Power Button" ] || continue
            for event in "${name%/name}"/event*; do
                [ -c "/dev/input/${event##*/}" ] && echo "/dev/input/${event##*/}" && return 0
            done
        done
        tries=$((tries + 1))
        sleep 0.1
    done
    return 1
)

# `virsh shutdown` and the broker's shutoff power policy press the ACPI power button: write the disk
# out, unmount it and power off, as a real desktop's ACPI daemon would.
watch_power_button() {
    device=$1
    # One key press is several 24-byte input events; the first is enough.
    dd if="$device" of=/dev/null bs=24 count=1 2>/dev/null || return
    report "power button pressed: shutting down"
    sync
    umount /mnt/disk 2>/dev/null
    poweroff -f
}

LABEL=$(decode_label)
DESKTOP=$(cmdline_value vdi.desktop)
VERSION=$(cat /etc/smartwork-image)
[ -n "$DESKTOP" ] && hostname "$DESKTOP"
DISK=$(mount_disk 2>/dev/null)
BOOTS=$(count_boot 2>/dev/null)
ROOT_IMAGE=$(disk_file etc/smartwork-image)
DEBIAN=$(disk_file etc/debian_version)
ISSUE=$(issue_text)
# Never blank the screen: a desktop left idle must still show who it belongs to.
printf '\033[9;0]' > /dev/tty1
show_screen > /dev/tty1
if POWER_BUTTON=$(power_button_device); then
    watch_power_button "$POWER_BUTTON" &
else
    report "no ACPI power button: shutdown requests are ignored"
fi
report "desktop ready desktop=$DESKTOP image=demo/$VERSION disk=$DISK boots=$BOOTS label=$LABEL"

while true; do
    PS1='\h:\w# ' setsid -c sh -i < /dev/tty1 > /dev/tty1 2>&1
    # A shell that dies at once must not spin the CPU; then redraw the screen for the next one.
    sleep 1
    show_screen > /dev/tty1
done
