# Shared by the scripts: make sure .venv exists and holds Clickpass (and,
# with "dev", the test tools) as pinned by setup.py.
#
#   source scripts/_venv.sh EXTRAS [POLICY]     (or: bash scripts/_venv.sh [EXTRAS])
#
# EXTRAS: comma-separated setup.py extras the caller needs ("" or "dev").
# An environment installed from this setup.py with at least those extras is
# used as it is (the one scripts/test installs, with "dev", serves every script).
# POLICY, when the environment does not match:
#   install      (scripts/run, scripts/test) install or re-install it
#   if-missing   (scripts/restore) install only when there is none; never
#                rewrite an installed one, warn and use it as it is
#   never        (scripts/backup, scripts/monitor: cron and services) never
#                reach for the network nor rewrite anything: warn and use it
#                as it is, or fail with one line when there is none
#
# The environment is $CLICKPASS_VENV, or .venv in this checkout. An
# environment whose Clickpass was installed from another source directory
# (another checkout or git worktree sharing it through CLICKPASS_VENV) is
# never re-installed from this one: the install is editable, so that would
# silently make the other checkout's nodes and scripts run this checkout's
# code. The script stops with one line instead; CLICKPASS_VENV_REPOINT=1
# re-installs it from this checkout all the same.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CLICKPASS_VENV:-$ROOT/.venv}
extras=${1:-}
policy=${2:-install}
stamp="$VENV/.clickpass-installed"
want_hash="$(cat "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT"/clickpass/balancer/csrc/* | sha256sum | cut -d' ' -f1)"

# True when the stamp says: installed from this setup.py with every extra in $extras.
installed_as_wanted() {
  local have_hash="" have_extras="" need
  [ -f "$stamp" ] || return 1
  read -r have_hash have_extras <"$stamp" || true
  [ "$have_hash" = "$want_hash" ] || return 1
  IFS=, read -ra need <<<"$extras"
  for extra in "${need[@]}"; do
    [ -z "$extra" ] && continue
    case ",$have_extras," in *",$extra,"*) ;; *) return 1 ;; esac
  done
  return 0
}

if [ "$policy" != install ] && [ -x "$VENV/bin/python" ] && [ -f "$stamp" ]; then
  if ! installed_as_wanted; then
    echo "clickpass: warning: $VENV was installed from another setup.py or without" \
      "the extras \"$extras\"; using it as it is (bash scripts/_venv.sh updates it)" >&2
  fi
  return 0 2>/dev/null || exit 0
fi
if [ "$policy" = never ]; then
  echo "clickpass: no installed environment at $VENV; install it first with:" \
    "bash $ROOT/scripts/_venv.sh" >&2
  exit 1
fi

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PYTHON=$(find_python) || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
      PYTHON=$(find_python)
    else
      echo "clickpass: Python 3.11 or newer is needed (install python3 and python3-venv)" >&2
      exit 1
    fi
  }
  "$PYTHON" -m venv "$VENV" || {
    echo "clickpass: cannot create a virtualenv at $VENV (install python3-venv)" >&2
    exit 1
  }
fi

# The front's HTTP parser is C (clickpass/balancer/csrc/): building it needs
# a C compiler and the headers of the Python the virtualenv runs on.
has_headers() {
  "$VENV/bin/python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}
if ! command -v cc >/dev/null 2>&1 || ! has_headers; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc python3-dev >/dev/null
  fi
  if ! command -v cc >/dev/null 2>&1 || ! has_headers; then
    echo "clickpass: building the front's parser needs a C compiler and Python's headers" \
      "(install gcc and python3-dev)" >&2
    exit 1
  fi
fi

# The source directory Clickpass was installed from into the environment
# (PEP 610's direct_url.json, which pip writes), or nothing when it holds none.
installed_from() {
  local record url
  for record in "$VENV"/lib/python3*/site-packages/clickpass-*.dist-info/direct_url.json; do
    [ -f "$record" ] || continue
    url=$(sed -n 's/.*"url": *"\([^"]*\)".*/\1/p' "$record")
    url=${url#file://}
    printf '%b\n' "${url//%/\\x}"  # undo the URL's %XX escapes
    return 0
  done
  return 0
}

if ! installed_as_wanted; then
  source_dir=$(installed_from)
  if [ -n "$source_dir" ] && [ "${CLICKPASS_VENV_REPOINT:-}" != 1 ] &&
     [ "$(cd "$source_dir" 2>/dev/null && pwd -P)" != "$(cd "$ROOT" && pwd -P)" ]; then
    echo "clickpass: $VENV runs Clickpass from $source_dir, not from this checkout ($ROOT);" \
      "not re-installing it from here (use an environment of this checkout's own, or set" \
      "CLICKPASS_VENV_REPOINT=1 to point it at this checkout)" >&2
    exit 1
  fi
  echo "clickpass: installing into $VENV ..." >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  target="$ROOT"
  [ -n "$extras" ] && target="$ROOT[$extras]"
  # compat mode puts the checkout itself on sys.path, so twistd finds the
  # plugin in ./twisted/plugins/ and edits take effect without reinstalling.
  # It also compiles the front's C parser (clickpass/balancer/csrc/) in
  # place. A failed build must stop here: the import check below would
  # otherwise pass on the extension an earlier build left behind.
  log="$VENV/.clickpass-install.log"
  if ! "$VENV/bin/python" -m pip install -q -e "$target" --config-settings editable_mode=compat \
    >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2 || true
    echo "clickpass: installation failed (pip's output is above and in $log)" >&2
    exit 1
  fi
  "$VENV/bin/python" -c 'import clickpass.tap, clickpass.balancer._http1, openid, pymysql, argon2' ||
    { echo "clickpass: installation failed" >&2; exit 1; }
  echo "$want_hash ${extras}" >"$stamp"
fi
