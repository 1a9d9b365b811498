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

import shlex

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
EXIT_SLOW = 11

# `running PID`: the process exists and is not a zombie. A session's programs are orphans (setsid --fork) whose
# parent is the host's init, which may reap them late; `kill -0` alone takes an exited one for alive.
RUNNING = """running() { s=$(sed -n 's/.*) \\([A-Za-z]\\).*/\\1/p' "/proc/$1/stat" 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]; }"""

# The common part of starting a session: $1 name, $2 user, $3 cpu quota in µs per 100 ms period or "max", $4
# memory limit in bytes or "max", $5 kind, then the programs the session will run (first words); stdin: the VNC
# password on one line. Leaves display n, uid, gid, home, dir and cgroups set, and everything of the session
# on the host but its processes.
PREPARE = f"""
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
"""

# Runs (detached by setsid --fork) as root: join the session's cgroups, record the pid, become the user.
# $1 session dir, $2 what (xvnc, wm, app), $3.. cgroup directories, "--", then the command. Xvnc gets the
# session's `ready` FIFO as file descriptor 3 and writes its display number there once it accepts
# connections (-displayfd 3); opening the FIFO waits for START's reader.
JOIN_AND_RUN = """
dir=$1 what=$2
shift 2
while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs"; shift; done
shift
echo $$ > "$dir/$what.pid.new" && mv "$dir/$what.pid.new" "$dir/$what.pid"
# The log is root's alone (what a program prints is its user's business); the umask is not inherited.
(umask 077; : > "$dir/$what.log")
[ "$what" = xvnc ] && exec 3> "$dir/ready"
exec "$@" >> "$dir/$what.log" 2>&1 < /dev/null
"""

# The whole start of a session in one SSH round trip: PREPARE, then Xvnc, the window manager and the
# program, each launched detached as the user in the session's cgroups and waited for before the next.
# $1 name, $2 user, $3 cpu, $4 memory (as PREPARE), $5 kind, $6 the desktop's name (Xvnc's -desktop), $7
# geometry, $8 seconds each step may take, $9 seconds the program must then stay up, $10 how many words the
# window manager's command has (0: none), then the window manager's words, then the program's. Prints `prepared <display> <gid> <cgroups>`, then `step <what>` before each step and `ready`.
# Xvnc is not polled for: it says when it accepts connections (-displayfd into the session's FIFO).
START = f"""
set -eu
{RUNNING}
prepare() {{
{PREPARE}
}}
name=$1 user=$2 cpu=$3 mem=$4 kind=$5 label=$6 geometry=$7 limit=$8 settle=$9 nwm=${{10}}
shift 10
first_wm= first_app=
[ "$nwm" -gt 0 ] && first_wm=$1
i=0
for word in "$@"; do
  [ "$i" -eq "$nwm" ] && {{ first_app=$word; break; }}
  i=$((i + 1))
done
prepare "$name" "$user" "$cpu" "$mem" "$kind" ${{first_wm:+"$first_wm"}} "$first_app"
echo "prepared $n $gid $cgroups"
set +e
join={shlex.quote(JOIN_AND_RUN)}
# $1 what, then the command: run it detached as the user in the session's cgroups, in the user's home.
launch() {{
  what=$1
  shift
  setsid --fork sh -c "$join" sh "$dir" "$what" $cgroups -- \\
    setpriv --reuid="$uid" --regid="$gid" --init-groups --reset-env sh -c 'cd "$HOME" && exec "$@"' sh "$@" \\
    </dev/null >/dev/null 2>&1
}}
# $1 what, $2 words to skip, $3 words to take, then all the words: launch that slice of them.
launch_words() {{
  what=$1 skip=$2 take=$3
  shift 3
  shift "$skip"
  rest=$(($# - take)) i=0
  while [ "$i" -lt "$take" ]; do set -- "$@" "$1"; shift; i=$((i + 1)); done
  shift "$rest"
  launch "$what" env LANG=C.UTF-8 DISPLAY=":$n" XAUTHORITY="$dir/xauth" "$@"
}}
# $1 what, $2 seconds it must stay up ("0": none): its pid recorded and the process (still) running. A
# program that exits at once (it cannot open its display, bad arguments) fails the start.
started() {{
  end=$(( $(date +%s) + limit ))
  until [ -s "$dir/$1.pid" ]; do
    [ "$(date +%s)" -le "$end" ] || exit {EXIT_SLOW}
    sleep 0.02
  done
  read -r pid < "$dir/$1.pid"
  running "$pid" || exit {EXIT_DIED}
  [ "$2" = 0 ] && return 0
  sleep "$2"
  running "$pid" || exit {EXIT_DIED}
}}
echo step xvnc
mkfifo -m 0600 "$dir/ready"
# Loopback only (-interface, -localhost); VNC password and X cookie in files only the user reads.
launch xvnc env LANG=C.UTF-8 Xvnc ":$n" -interface 127.0.0.1 -localhost -rfbport $((5900 + n)) \\
  -SecurityTypes VncAuth -PasswordFile "$dir/passwd" -auth "$dir/xauth" -nolisten tcp \\
  -geometry "$geometry" -depth 24 -desktop "$label" -displayfd 3
# Xvnc writes its display number into the FIFO once it accepts connections; end of file first: it died.
timeout "$limit" sh -c 'read -r shown < "$1" && [ -n "$shown" ]' sh "$dir/ready"
case $? in
  0) ;;
  124) started xvnc 0; exit {EXIT_SLOW};;
  *) exit {EXIT_DIED};;
esac
if [ "$nwm" -gt 0 ]; then
  echo step wm
  launch_words wm 0 "$nwm" "$@"
  started wm 0
fi
echo step app
launch_words app "$nwm" $(($# - nwm)) "$@"
started app "$settle"
echo ready
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
