#!/usr/bin/env bash
# A/B of two commits on whole `taskrun run -j 1 --executor inline` processes of the
# 5,000-task factory-made layered file (bench/workloads.py), alternating, median CPU
# (user+sys) and wall of each; the ratio B/A is what to quote.
#
#   bench/ab.sh REV_A REV_B warm|cold [N]     e.g. bench/ab.sh 147c4f5 HEAD cold 7
#
# Each commit's `taskrun` package is exported with `git archive` and imported through
# PYTHONPATH by the current interpreter (its dependencies are the installed ones).
set -euo pipefail
a=$1 b=$2 phase=$3 n=${4:-5}
[ "$phase" = warm ] || [ "$phase" = cold ] || { echo "phase: warm or cold" >&2; exit 2; }
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=${PYTHON:-python3}
unset PYTHONUNBUFFERED PYTHONDONTWRITEBYTECODE
export NO_COLOR=1
(cd "$repo/bench" && "$py" -c "from workloads import factory_tasks_py, make_graph; \
print(factory_tasks_py(make_graph('layered', 5000)))") > "$work/tasks.py"
for side in A B; do
  rev=$a; [ "$side" = B ] && rev=$b
  mkdir -p "$work/$side/tree" "$work/$side/project"
  git -C "$repo" archive "$rev" taskrun | tar -x -C "$work/$side/tree"
  cp "$work/tasks.py" "$work/$side/project/"
  # One untimed run: byte-code compiled, and (warm) the cache filled.
  (cd "$work/$side/project" && PYTHONPATH="$work/$side/tree" "$py" -m taskrun run -j 1 --executor inline >/dev/null)
done
for _ in $(seq "$n"); do
  for side in A B; do
    cd "$work/$side/project"
    [ "$phase" = cold ] && rm -rf .taskrun
    PYTHONPATH="$work/$side/tree" /usr/bin/time -f "$side %e %U %S" \
      "$py" -m taskrun run -j 1 --executor inline >/dev/null 2>>"$work/times"
  done
done
"$py" - "$work/times" "$phase" "$a" "$b" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.startswith(("A ", "B "))]
cpu = {}
for side, rev in (("A", sys.argv[3]), ("B", sys.argv[4])):
    wall = [float(r[1]) for r in rows if r[0] == side]
    cpu[side] = st.median(float(r[2]) + float(r[3]) for r in rows if r[0] == side)
    print(f"{sys.argv[2]} {side} ({rev}): cpu {cpu[side]:.3f} s, wall {st.median(wall):.3f} s (median of {len(wall)})")
print(f"{sys.argv[2]} B/A cpu: {cpu['B'] / cpu['A']:.2f}")
PY
