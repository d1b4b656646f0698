#!/bin/bash
# The repository stands on its own: every reference in a tracked file
# resolves inside it.
#
#   test/docs_refs.sh [SOURCE_DIR]
#
# Fails (exit 1, naming file and line) when
# - a file names a path outside the repository: the documents directory
#   next to a checkout, or an absolute path of one machine's home or work
#   directory;
# - a file cites a protocol section (a section sign and a number, e.g. 5.4)
#   that is not a heading of docs/dmsg-protocol.md;
# - a file names a docs/ file that does not exist.
# Runs in the unit suite (no root, no build needed).
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT"
SPEC=docs/dmsg-protocol.md
[ -f "$SPEC" ] || { echo "FAIL: $SPEC is missing" >&2; exit 1; }

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files)
else
  mapfile -t files < <(find . -path ./build -prune -o -path ./.git -prune -o -type f -print | sed 's|^\./||')
fi
# Only text files; seeds and other binaries cannot hold references.
mapfile -t files < <(grep -IlE . "${files[@]}" 2>/dev/null || true)
[ "${#files[@]}" -gt 50 ] || { echo "FAIL: only ${#files[@]} files found under $ROOT" >&2; exit 1; }

failed=0
bad() { echo "FAIL: $*" >&2; failed=1; }

# Paths outside the repository. The patterns are split so that this file
# does not match itself.
outside="\.\./shar""ed|shar""ed/docs|/wo""rk/|/ho""me/[a-z]"
if hits=$(grep -nE "$outside" "${files[@]}"); then
  while read -r h; do bad "names a path outside the repository: $h"; done <<<"$hits"
fi

# Section numbers: the headings of the spec ("## 5. ...", "### 5.4 ...",
# "#### 7.3.2 ...") against every citation.
sections=$(sed -nE 's/^#{2,4} ([0-9]+(\.[0-9]+)*)\.? .*/\1/p' "$SPEC" | sort -u)
[ "$(wc -l <<<"$sections")" -ge 40 ] || bad "too few numbered headings in $SPEC"
bad_refs=$(grep -noE '§[0-9]+(\.[0-9]+)*' "${files[@]}" |
  awk -F: -v secs="$sections" 'BEGIN { n = split(secs, a, "\n"); for (i = 1; i <= n; i++) ok[a[i]] = 1 }
    { num = $3; sub(/^§/, "", num); if (!(num in ok)) print $1 ":" $2 " cites " $3 }')
if [ -n "$bad_refs" ]; then
  while read -r h; do bad "$h, which is no heading of $SPEC"; done <<<"$bad_refs"
fi

# docs/ files named anywhere must exist.
while IFS=: read -r file line ref; do
  [ -e "$ref" ] || bad "$file:$line names $ref, which does not exist"
done < <(grep -noE '(^|[^a-zA-Z0-9_./-])docs/[a-zA-Z0-9_.-]+\.(md|[0-9]|example)\b' "${files[@]}" |
  sed -E 's/^([^:]*):([0-9]+):[^d]*/\1:\2:/')

if [ "$failed" -ne 0 ]; then exit 1; fi
echo "PASS: ${#files[@]} files, $(wc -l <<<"$sections") sections in $SPEC"
