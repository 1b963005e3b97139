#!/usr/bin/env bash
# Runs every fuzz target of the module, one `go test -fuzz` per target (go
# test fuzzes one target per invocation).
#
# Targets are discovered, not listed: every top-level
#   func FuzzXxx(f *testing.F)
# in a *_test.go file is run, so new targets are picked up automatically.
#
# Usage: scripts/fuzz.sh [PATTERN]
#   PATTERN   optional extended regexp; only targets whose "pkg.FuzzName"
#             (pkg like ./raftstore) matches it are run.
# Environment:
#   FUZZTIME  how long each target fuzzes: a duration (60s) or a count of
#             inputs (2000x). Default 60s.
#   FUZZMINIMIZETIME  time (or Nx count) go test spends minimizing each
#             new interesting or failing input; 0: none. Default 5s; go's own
#             default (60s) can eat a whole short run on one input.
#   FUZZTIMEOUT  go test -timeout for each target (a hung input then fails
#             the run instead of blocking it). Default FUZZTIME plus 10m
#             when FUZZTIME is a plain duration (90s, 10m, 1h), else none.
#   FUZZCORPUS  "cache" (default): start from the seeds plus what earlier
#             runs found, kept in Go's build cache; "seeds": start from the
#             seeds only, in a fresh directory removed afterwards. A short
#             run uses "seeds": with a large cached corpus, gathering its
#             baseline coverage can outlast a short -fuzztime, which go test
#             reports as a failure ("context deadline exceeded").
#   FUZZINSTRUMENT  "module" (default): each package's fuzz test binary
#             is built once (go test -c), with coverage instrumentation
#             (-d=libfuzzer) on this module's packages only, and runs each
#             of its targets; "all": one `go test -fuzz` per target, which
#             instruments every dependency too (the standard library's and
#             third-party parsers, at about an eighth of the speed per
#             input, and a link per target).
#   GO        the go command. Default go.
#   FUZZFLAGS extra flags: for go test under FUZZINSTRUMENT=all (e.g.
#             -parallel 1), for the test binary otherwise (-test.parallel 1).
#
# The seed corpora (f.Add and testdata/fuzz/FuzzXxx/) run first, then the
# fuzzer. Inputs the fuzzer finds interesting are kept in Go's build cache
# (GOCACHE/fuzz), never in the tree; only a failing input is written, to
# the package's testdata/fuzz/FuzzXxx/ (go test's behaviour), so that it
# becomes a regression seed once committed. A passing run leaves the tree
# unchanged. Every target runs even after a failure; the exit status is
# non-zero if any failed, and each failing input's path is printed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-5s}
if [ -z "${FUZZTIMEOUT:-}" ]; then
	# FUZZTIME plus 10 minutes for a plain duration; none (0) otherwise.
	FUZZTIMEOUT=0
	if [[ $FUZZTIME =~ ^([0-9]+)(s|m|h)$ ]]; then
		n=${BASH_REMATCH[1]}
		case ${BASH_REMATCH[2]} in
		m) n=$((n * 60)) ;;
		h) n=$((n * 3600)) ;;
		esac
		FUZZTIMEOUT="$((n + 600))s"
	fi
fi
FUZZFLAGS=${FUZZFLAGS:-}
PATTERN=${1:-}

# discover prints "dir name" for each fuzz target, sorted.
discover() {
	grep -rE --include='*_test.go' \
		--exclude-dir=.git --exclude-dir=testdata --exclude-dir=vendor --exclude-dir=node_modules \
		'^func Fuzz[A-Za-z0-9_]*\([A-Za-z_][A-Za-z0-9_]* \*testing\.F\)' . |
		sed -E 's#^\./(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#; s#^\./[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#. \1#' |
		sort -u
}

targets=()
while read -r dir name; do
	[ -n "$name" ] || continue
	pkg="./$dir"
	[ "$dir" = "." ] && pkg="."
	if [ -n "$PATTERN" ] && ! grep -qE -- "$PATTERN" <<<"$pkg.$name"; then
		continue
	fi
	targets+=("$pkg $name")
done < <(discover)

if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz: no fuzz targets found${PATTERN:+ matching $PATTERN}" >&2
	exit 1
fi

echo "fuzz: ${#targets[@]} targets, -fuzztime $FUZZTIME each (-fuzzminimizetime $FUZZMINIMIZETIME, -timeout $FUZZTIMEOUT)"
start=$SECONDS
passed=0
failed=()
log=$(mktemp)
corpus=
case ${FUZZCORPUS:-cache} in
cache) ;;
seeds) corpus=$(mktemp -d) ;;
*)
	echo "fuzz: FUZZCORPUS must be cache or seeds, not ${FUZZCORPUS}" >&2
	exit 2
	;;
esac
trap 'rm -f "$log"; [ -z "$corpus" ] || rm -rf "$corpus"' EXIT

bindir=
case ${FUZZINSTRUMENT:-module} in
all) ;;
module)
	# One fuzz test binary per package, built before any target runs.
	# Packages of this module get the fuzzer's coverage counters (what
	# go test -fuzz adds to every package); the rest of the build is
	# plain, and cached between packages.
	bindir=$(mktemp -d)
	module=$("$GO" list -m) || exit 2
	gocache=$("$GO" env GOCACHE) || exit 2
	declare -A bin=() importpath=()
	pkgs=()
	for t in "${targets[@]}"; do
		pkg=${t% *}
		[ -z "${bin[$pkg]:-}" ] || continue
		pkgs+=("$pkg")
		bin[$pkg]="$bindir/${#pkgs[@]}.test"
		importpath[$pkg]=$("$GO" list "$pkg") || exit 2
	done
	# The first build compiles what all share; the others, mostly
	# links, run two at a time.
	build() {
		"$GO" test -c -gcflags="$module/...=-d=libfuzzer" -o "${bin[$1]}" "$1" >"${bin[$1]}.log" 2>&1
	}
	build "${pkgs[0]}"
	for pkg in "${pkgs[@]:1}"; do
		while [ "$(jobs -pr | wc -l)" -ge 2 ]; do wait -n; done
		build "$pkg" &
	done
	wait
	for pkg in "${pkgs[@]}"; do
		if [ ! -x "${bin[$pkg]}" ]; then
			echo "fuzz: FAIL $pkg (build)"
			cat "${bin[$pkg]}.log"
			bin[$pkg]=failed
		fi
	done
	echo "fuzz: built ${#pkgs[@]} test binaries in $((SECONDS - start))s"
	;;
*)
	echo "fuzz: FUZZINSTRUMENT must be module or all, not ${FUZZINSTRUMENT}" >&2
	exit 2
	;;
esac
trap 'rm -f "$log"; [ -z "$corpus" ] || rm -rf "$corpus"; [ -z "$bindir" ] || rm -rf "$bindir"' EXIT

for t in "${targets[@]}"; do
	pkg=${t% *}
	name=${t#* }
	t0=$SECONDS
	if [ -n "$bindir" ]; then
		if [ "${bin[$pkg]}" = failed ]; then
			failed+=("$pkg $name")
			continue
		fi
		# Where go test -fuzz would keep the corpus, unless seeds only.
		cachedir="$gocache/fuzz/${importpath[$pkg]}"
		[ -z "$corpus" ] || cachedir="$corpus/${pkg#./}/$name"
		# The binary runs in its package's directory, as go test runs it
		# (seeds in testdata/fuzz, failing inputs written there).
		# shellcheck disable=SC2086 # FUZZFLAGS is split on purpose
		(cd "$pkg" && "${bin[$pkg]}" -test.run '^$' -test.fuzz "^${name}\$" -test.fuzztime "$FUZZTIME" \
			-test.fuzzminimizetime "$FUZZMINIMIZETIME" -test.timeout "$FUZZTIMEOUT" \
			-test.fuzzcachedir="$cachedir" $FUZZFLAGS) >"$log" 2>&1
		rc=$?
	else
		cacheargs=()
		if [ -n "$corpus" ]; then
			# The test binary's own flag for where the fuzzer keeps its
			# corpus; given after the go command's, it wins.
			cacheargs=(-args "-test.fuzzcachedir=$corpus/${pkg#./}/$name")
		fi
		# shellcheck disable=SC2086 # FUZZFLAGS is split on purpose
		"$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" \
			-fuzzminimizetime "$FUZZMINIMIZETIME" -timeout "$FUZZTIMEOUT" $FUZZFLAGS "$pkg" "${cacheargs[@]}" >"$log" 2>&1
		rc=$?
	fi
	if [ $rc -eq 0 ] && grep -q 'no fuzz tests to fuzz\|no tests to run' "$log"; then
		# A build constraint left the target out on this platform.
		echo "fuzz: skip $pkg $name (not built on this platform)"
		passed=$((passed + 1))
		continue
	fi
	if [ $rc -eq 0 ]; then
		echo "fuzz: ok   $pkg $name ($((SECONDS - t0))s)"
		passed=$((passed + 1))
		continue
	fi
	echo "fuzz: FAIL $pkg $name ($((SECONDS - t0))s)"
	cat "$log"
	# go test names the failing input relative to the package directory.
	inputs=$(sed -nE 's#.*(testdata/fuzz/'"$name"'/[0-9a-f]+).*#\1#p' "$log" | sort -u)
	for in in $inputs; do
		echo "fuzz: failing input: ${pkg#./}/$in"
		echo "fuzz:   reproduce: $GO test -run '^${name}/$(basename "$in")\$' $pkg"
	done
	failed+=("$pkg $name")
done

echo "fuzz: total $((SECONDS - start))s"
if [ ${#failed[@]} -gt 0 ]; then
	for f in "${failed[@]}"; do
		echo "fuzz: failed: $f"
	done
fi
echo "fuzz: $passed passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
