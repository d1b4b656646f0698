#!/bin/bash
# The walls between the folders hold (docs/design.md, "The map"): each
# folder includes only the folders its row names.
#
#   test/module_walls.sh [SOURCE_DIR]
#
# Reads every #include "..." of our own headers in proto/, fusedev/ and
# daemon/ and fails naming the file and the include that crosses a wall.
# Runs in the unit suite.
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT"

# folder -> the include prefixes it may use besides its own folder
# (proto/*.pb.h is generated from proto/ and counts as proto/).
allowed() {
  case $1 in
    proto) echo "" ;;
    fusedev) echo "" ;;
    daemon/base) echo "proto/ fusedev/disk_tree.h fusedev/block_device.h" ;;
    daemon/control) echo "proto/ daemon/base/ fusedev/disk_tree.h fusedev/block_device.h" ;;
    daemon/link) echo "proto/ daemon/base/" ;;
    daemon/export) echo "proto/ daemon/base/ daemon/link/ fusedev/disk_tree.h fusedev/block_device.h" ;;
    daemon/import) echo "proto/ daemon/base/ daemon/link/ fusedev/" ;;
    daemon) echo "proto/ fusedev/ daemon/" ;;
  esac
}

failed=0
checked=0
while IFS= read -r file; do
  dir=$(dirname "$file")
  allow="$dir/ $(allowed "$dir")"
  while IFS= read -r inc; do
    case $inc in config.h) continue ;; esac
    # A relative path would pass every prefix below unseen: refuse it.
    case $inc in ../* | */../* | ./*)
      echo "FAIL: $file includes \"$inc\": name our headers from the root (\"daemon/...\")" >&2
      failed=1
      continue
      ;;
    esac
    case $inc in proto/* | fusedev/* | daemon/*) ;; *) continue ;; esac
    ok=0
    for prefix in $allow; do
      case $inc in "$prefix"*) ok=1 ;; esac
    done
    checked=$((checked + 1))
    if [ "$ok" -ne 1 ]; then
      echo "FAIL: $file includes \"$inc\": $dir may use only ${allow% }" >&2
      failed=1
    fi
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$file")
done < <(find proto fusedev daemon -name '*.h' -o -name '*.cc' | sort)

if [ "$checked" -eq 0 ]; then
  echo "FAIL: no includes found under $ROOT" >&2
  exit 1
fi
if [ "$failed" -ne 0 ]; then exit 1; fi
echo "PASS: $checked includes, none crosses a wall"
