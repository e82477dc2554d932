#!/usr/bin/env bash
# The many-core scaling run of issue 15, prepared as one command for a lent 16-core machine
# (its per-command limit is 10 minutes; this takes about 5 at the defaults). From the
# repository root of the development checkout:
#
#   mkdir -p .device && cp ../shared/data/mnist/*.gz .device/     # MNIST travels as .device
#   run(command="bash bench/device_scaling.sh", carry=[".device"], timeout_s=600)
#
# It installs this tree (pip --no-build-isolation: that machine reaches no package index),
# records the CPU (lscpu, cpu_info), then runs bench/run.py for chainrule and PyTorch eager
# (whatever torch is installed there): the MNIST MLP 784-512-256-10 at batch 128 and 512 and
# the example CNN, at 1, 2, 4, 8 and 16 threads, one process per contender and thread count,
# one warm-up and two timed epochs each. Everything lands in $OUT (the run tool's output
# folder; /tmp/chainrule-scaling elsewhere): machine.txt, cpu_info.json, scaling.json,
# scaling.txt. Overrides: THREADS, WORKLOADS, ROUNDS, EPOCHS; SKIP_INSTALL=1 uses the
# chainrule already installed (a dry run on a development machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/chainrule-scaling}"
mkdir -p "$OUT"
if [ -z "${CHAINRULE_MNIST_DIR:-}" ]; then
  if [ -f .device/train-images-idx3-ubyte.gz ]; then
    export CHAINRULE_MNIST_DIR="$PWD/.device"
  elif [ -f ../shared/data/mnist/train-images-idx3-ubyte.gz ]; then
    CHAINRULE_MNIST_DIR="$(cd ../shared/data/mnist && pwd)"
    export CHAINRULE_MNIST_DIR
  else
    echo "device_scaling: no MNIST; set CHAINRULE_MNIST_DIR or copy the four .gz files into .device/" >&2
    exit 2
  fi
fi
{ date -u; nproc; lscpu || true; } > "$OUT/machine.txt" 2>&1
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python -m pip install -q --no-build-isolation . 2>&1 | tail -5
fi
python -c 'import chainrule as cr, json; print(json.dumps(cr.cpu_info()))' | tee "$OUT/cpu_info.json"
python bench/run.py --workloads "${WORKLOADS:-mlp128,mlp512,cnn64}" --threads "${THREADS:-1,2,4,8,16}" \
  --rounds "${ROUNDS:-1}" --epochs "${EPOCHS:-2}" --warmup 1 --no-gemm --contenders chainrule,torch \
  --out "$OUT/scaling.json" 2>&1 | tee "$OUT/scaling.txt"
