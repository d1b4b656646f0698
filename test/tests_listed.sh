#!/bin/bash
# Every test file is run: a test file that test/meson.build does not name
# would be built and run by nothing.
#
#   test/tests_listed.sh [SOURCE_DIR]
#
# - each test/unit/*_test.cc and test/loop/*_test.cc is named in
#   test/meson.build;
# - each test/integration/*.sh is named in test/meson.build or is a helper
#   that another integration script sources.
# (A named file that is missing fails meson itself; a tag with no test cases
# fails its run through -w NoTests.) Runs in the unit suite.
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT/test"
failed=0
for f in unit/*_test.cc loop/*_test.cc; do
  grep -qF "'$f'" meson.build || { echo "FAIL: test/$f is not in test/meson.build" >&2; failed=1; }
done
for f in integration/*.sh; do
  name=${f#integration/}
  grep -qF "'$name'" meson.build && continue
  grep -qE "^[[:space:]]*(source|\.) .*/$name\"?\$" integration/*.sh && continue
  echo "FAIL: test/$f is neither in test/meson.build nor sourced by a test" >&2
  failed=1
done
if [ "$failed" -ne 0 ]; then exit 1; fi
echo "PASS: every unit, loop and integration test file is listed"
