"""The shell scripts the session-host provider runs on a host, as root, over SSH.

Each is fixed text run as `sh -c SCRIPT sh ARG…`: what comes from users (account names, commands) arrives
only as positional parameters, quoted by shlex.join, never spliced into the script. The VNC password
arrives on standard input; the X cookie is made on the host and never leaves it. Exit statuses below 10 are the scripts' own verdicts,
turned into errors by hypervisor/session_host.py.

Layout on a host:
- `/var/lib/smartwork-vdi/sessions/<name>/`: one directory per session (root, 0711): `session` (key=value
  state: user, display, port, kind, cgroups), `passwd` (the VNC password as `vncpasswd -f` makes it) and
  `xauth` (the X cookie), both owned by the session's user and 0600; `*.pid`, `*.log` (root, 0600).
- `/var/lib/smartwork-vdi/sessions/.displays/<N>`: a symlink to the session holding display :N; made with
  `ln -s`, which is atomic, so two brokers starting sessions at once never share a display.
- cgroups named `smartwork-vdi/<name>` in each hierarchy the host has (cgroup v2: one; a v1/v2 hybrid: the
  unified one for tracking and cgroup.kill, cpu and memory for the limits).
"""

from __future__ import annotations

SESSIONS_DIR = "/var/lib/smartwork-vdi/sessions"
CGROUP_NAME = "smartwork-vdi"
FIRST_DISPLAY = 10
LAST_DISPLAY = 599

EXIT_NO_XVNC = 3
EXIT_UNKNOWN_USER = 4
EXIT_FULL = 5
EXIT_NO_COMMAND = 6
EXIT_EXISTS = 7
EXIT_DIED = 8
EXIT_NO_CGROUPS = 9
EXIT_BAD_ACCOUNT = 10

# `running PID`: the process exists and is not a zombie. A session's programs are orphans (setsid --fork) whose
# parent is the host's init, which may reap them late; `kill -0` alone takes an exited one for alive.
RUNNING = """running() { s=$(sed -n 's/.*) \\([A-Za-z]\\).*/\\1/p' "/proc/$1/stat" 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]; }"""

# $1 name, $2 user, $3 cpu quota in µs per 100 ms period or "max", $4 memory limit in bytes or "max",
# $5 kind, $6.. the programs the session will run (first words); stdin: the VNC password on one line.
# Prints the display number, the gid and the cgroups.
PREPARE = f"""
set -eu
name=$1 user=$2 cpu=$3 mem=$4 kind=$5
shift 5
base={SESSIONS_DIR}
command -v Xvnc >/dev/null 2>&1 && command -v vncpasswd >/dev/null 2>&1 || exit {EXIT_NO_XVNC}
entry=$(getent passwd "$user") || exit {EXIT_UNKNOWN_USER}
uid=$(echo "$entry" | cut -d: -f3) gid=$(echo "$entry" | cut -d: -f4) home=$(echo "$entry" | cut -d: -f6)
# The state file below is sourced by root later: only plain absolute paths and numbers go into it.
case $home in /*[!A-Za-z0-9._/-]*|[!/]*|'') exit {EXIT_BAD_ACCOUNT};; esac
case $uid$gid in *[!0-9]*|'') exit {EXIT_BAD_ACCOUNT};; esac
# Each program must be one the user can run: found in the user's PATH as the user sees it.
for program in "$@"; do
  setpriv --reuid="$uid" --regid="$gid" --init-groups --reset-env sh -c 'command -v "$1" >/dev/null' sh "$program" \\
    || {{ echo "$program" >&2; exit {EXIT_NO_COMMAND}; }}
done
mkdir -p -m 0711 "$base" "$base/.displays"
dir=$base/$name
mkdir -m 0711 "$dir" 2>/dev/null || exit {EXIT_EXISTS}
n={FIRST_DISPLAY}
until [ ! -e "/tmp/.X$n-lock" ] && [ ! -e "/tmp/.X11-unix/X$n" ] && ln -s "$name" "$base/.displays/$n" 2>/dev/null; do
  n=$((n + 1))
  [ "$n" -le {LAST_DISPLAY} ] || {{ rmdir "$dir"; exit {EXIT_FULL}; }}
done
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  cgroups=/sys/fs/cgroup/{CGROUP_NAME}/$name
else
  cgroups=
  for h in unified cpu memory; do
    [ -d "/sys/fs/cgroup/$h" ] && cgroups="$cgroups /sys/fs/cgroup/$h/{CGROUP_NAME}/$name"
  done
fi
# Without a cgroup the session's processes could be neither limited nor all found again to be killed.
[ -n "$cgroups" ] || {{ rm -f "$base/.displays/$n"; rmdir "$dir"; exit {EXIT_NO_CGROUPS}; }}
# Written first, so that whatever fails below, DESTROY finds everything to remove.
printf "user='%s'\\nuid='%s'\\ngid='%s'\\nhome='%s'\\ndisplay='%s'\\nport='%s'\\nkind='%s'\\ncgroups='%s'\\n" \\
  "$user" "$uid" "$gid" "$home" "$n" $((5900 + n)) "$kind" "$cgroups" > "$dir/session.new"
mv "$dir/session.new" "$dir/session"
# Homes persist across sessions; made on first use like pam_mkhomedir.
[ -d "$home" ] || install -d -o "$uid" -g "$gid" -m 0700 "$home"
install -d -m 1777 /tmp/.X11-unix
# read and printf are builtins: the password is on no command line. vncpasswd -f reads it from stdin.
IFS= read -r password
(umask 077; printf '%s\\n' "$password" | vncpasswd -f > "$dir/passwd")
# The X cookie, made here and never sent anywhere: one MIT-MAGIC-COOKIE-1 entry of the X authority format
# (family FamilyWild, no address, the display number, the name, 16 random bytes; lengths big-endian u16).
len=$(printf '%03o' "${{#n}}")
(umask 077; {{ printf "\\377\\377\\000\\000\\000\\\\$len%s\\000\\022MIT-MAGIC-COOKIE-1\\000\\020" "$n"
  head -c 16 /dev/urandom; }} > "$dir/xauth")
chown "$uid:$gid" "$dir/passwd" "$dir/xauth"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  top=/sys/fs/cgroup/{CGROUP_NAME}
  mkdir -p "$top"
  echo "+cpu +memory" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
  echo "+cpu +memory" > "$top/cgroup.subtree_control" 2>/dev/null || true
  mkdir "$cgroups"
  echo "$cpu 100000" > "$cgroups/cpu.max"
  echo "$mem" > "$cgroups/memory.max"
else
  for cg in $cgroups; do mkdir -p "$cg"; done
  q=$cpu; [ "$q" = max ] && q=-1
  c=/sys/fs/cgroup/cpu/{CGROUP_NAME}/$name
  if [ -d "$c" ]; then echo 100000 > "$c/cpu.cfs_period_us"; echo "$q" > "$c/cpu.cfs_quota_us"; fi
  m=/sys/fs/cgroup/memory/{CGROUP_NAME}/$name
  if [ -d "$m" ] && [ "$mem" != max ]; then echo "$mem" > "$m/memory.limit_in_bytes"; fi
fi
echo "$n $gid $cgroups"
"""

# Runs (detached by setsid --fork) as root: join the session's cgroups, record the pid, become the user.
# $1 session dir, $2 what (xvnc, wm, app), $3.. cgroup directories, "--", then the command.
JOIN_AND_RUN = """
dir=$1 what=$2
shift 2
while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs"; shift; done
shift
echo $$ > "$dir/$what.pid.new" && mv "$dir/$what.pid.new" "$dir/$what.pid"
# The log is root's alone (what a program prints is its user's business); the umask is not inherited.
(umask 077; : > "$dir/$what.log")
exec "$@" >> "$dir/$what.log" 2>&1 < /dev/null
"""

# $1 name, $2 what, $3 seconds; waits until the process recorded its pid, then checks it is alive. With
# $4 = "x", also waits for the X server's socket. $5, if given, is a number of 20 ms steps the process must
# then stay alive (a program that exits at once, e.g. one that cannot open its display, is caught here).
WAIT_STARTED = f"""
{RUNNING}
dir={SESSIONS_DIR}/$1 what=$2 limit=$3 x=${{4:-}} settle=${{5:-0}}
. "$dir/session"
end=$(( $(date +%s) + limit ))
while :; do
  if [ -s "$dir/$what.pid" ]; then
    pid=$(cat "$dir/$what.pid")
    running "$pid" || exit {EXIT_DIED}
    if [ -z "$x" ] || [ -S "/tmp/.X11-unix/X$display" ]; then
      i=0
      while [ "$i" -lt "$settle" ]; do
        sleep 0.02
        running "$pid" || exit {EXIT_DIED}
        i=$((i + 1))
      done
      exit 0
    fi
  fi
  [ "$(date +%s)" -le "$end" ] || exit 1
  sleep 0.02
done
"""

# $1 name. Kills every process of the session (its cgroups), removes its cgroups, files and display.
DESTROY = f"""
base={SESSIONS_DIR}
dir=$base/$1
[ -f "$dir/session" ] || {{ rm -rf "$dir"; exit 0; }}
. "$dir/session"
for cg in $cgroups; do
  if [ -f "$cg/cgroup.kill" ]; then echo 1 > "$cg/cgroup.kill"; else
    for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  fi
done
end=$(( $(date +%s) + 10 ))
for cg in $cgroups; do
  while [ -d "$cg" ] && ! rmdir "$cg" 2>/dev/null; do
    [ "$(date +%s)" -le "$end" ] || {{ echo "processes of the session in $cg would not die" >&2; exit 1; }}
    for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    sleep 0.02
  done
done
rm -f "/tmp/.X$display-lock" "/tmp/.X11-unix/X$display"
[ "$(readlink "$base/.displays/$display")" = "$1" ] && rm -f "$base/.displays/$display"
rm -rf "$dir"
"""

# One line per session: name, user, display, port, kind, then "1"/"0" for xvnc, wm and app alive.
STATUS = f"""
base={SESSIONS_DIR}
{RUNNING}
alive() {{ [ -s "$1" ] && running "$(cat "$1")" && echo 1 || echo 0; }}
for dir in "$base"/*/; do
  [ -f "$dir/session" ] || continue
  (. "$dir/session"
   echo "$(basename "$dir") $user $display $port $kind $(alive "$dir/xvnc.pid") $(alive "$dir/wm.pid") \\
$(alive "$dir/app.pid")")
done
true
"""

# Host figures for placement: CPUs, /proc/stat's cpu line, MemTotal and MemAvailable (kB).
STATS = """
nproc
head -n 1 /proc/stat
grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
"""

# $1 name. What the session uses now: "memory <bytes>" (its memory cgroup: v2 memory.current, v1
# memory.usage_in_bytes) and "cpu_usec <µs>" (CPU time of all its processes, v2 cpu.stat).
USAGE = f"""
. {SESSIONS_DIR}/"$1"/session || exit 1
for cg in $cgroups; do
  [ -f "$cg/memory.current" ] && echo "memory $(cat "$cg/memory.current")"
  [ -f "$cg/memory.usage_in_bytes" ] && echo "memory $(cat "$cg/memory.usage_in_bytes")"
  [ -f "$cg/cpu.stat" ] && grep -q '^usage_usec ' "$cg/cpu.stat" && echo "cpu_usec $(awk '$1 == "usage_usec" {{print $2}}' "$cg/cpu.stat")"
done
true
"""
