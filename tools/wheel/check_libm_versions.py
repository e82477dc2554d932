"""Check, before tools/build_wheel.sh links glibc_2_28_shims.c, that the glibc versions the
shims bind (exp, log, pow @GLIBC_2.2.5) return bit for bit what the default versions
(@GLIBC_2.29) return on this machine (any NaN equals any NaN): special values, the overflow and underflow edges, and a
seeded sample over the whole range. Exits 1 naming the first difference."""

from __future__ import annotations

import ctypes
import sys

import numpy as np


def _versions(name: str, nargs: int) -> tuple[object, object]:
    libm = ctypes.CDLL("libm.so.6")
    dlvsym = ctypes.CDLL(None).dlvsym
    dlvsym.restype = ctypes.c_void_p
    dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    proto = ctypes.CFUNCTYPE(ctypes.c_double, *([ctypes.c_double] * nargs))
    found = []
    for version in (b"GLIBC_2.2.5", b"GLIBC_2.29"):
        addr = dlvsym(libm._handle, name.encode(), version)
        if not addr:
            sys.exit(f"check_libm_versions: libm has no {name}@{version.decode()}")
        found.append(proto(addr))
    return found[0], found[1]


def _same(a: float, b: float) -> bool:
    """Bit for bit, except that any two NaNs are the same: for a domain error (log(-1),
    pow(-2, 0.5)) the GLIBC_2.2.5 wrapper returns a NaN of its own making, whose sign bit may
    differ. A NaN stays a NaN either way (the core's NaN guard tests isnan/isfinite)."""
    if np.isnan(a) and np.isnan(b):
        return True
    return int(np.float64(a).view(np.uint64)) == int(np.float64(b).view(np.uint64))


def main() -> int:
    rng = np.random.default_rng(20261203)
    special = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, np.inf, -np.inf, np.nan, 5e-324, 2.2250738585072014e-308,
               1.7976931348623157e308, 709.782712893384, 709.79, -745.1332191019411, -745.2, 1e-300,
               -1e-300, 88.72283935546875, -87.33654, 1e300]
    sample = np.concatenate([
        np.array(special),
        rng.uniform(-750, 750, 20000),                      # exp's whole finite range and past it
        np.exp(rng.uniform(-745, 709, 20000)),              # log over the positive range
        -np.exp(rng.uniform(-20, 20, 1000)),                # log's domain errors
        rng.standard_normal(5000),
    ])
    checked = 0
    for name in ("exp", "log"):
        old, new = _versions(name, 1)
        for x in sample:
            a, b = old(float(x)), new(float(x))
            if not _same(a, b):
                print(f"check_libm_versions: {name}({x!r}) = {a!r} @GLIBC_2.2.5 but {b!r} @GLIBC_2.29")
                return 1
            checked += 1
    old, new = _versions("pow", 2)
    bases = np.concatenate([np.array(special), rng.uniform(-10, 10, 3000), np.exp(rng.uniform(-50, 50, 3000))])
    exps = np.concatenate([np.array(special), rng.uniform(-400, 400, 3000), np.round(rng.uniform(-50, 50, 3000))])
    pairs = [(b, e) for b in special for e in special] + list(zip(bases, exps)) + list(zip(bases, exps[::-1]))
    for b, e in pairs:
        a, c = old(float(b), float(e)), new(float(b), float(e))
        if not _same(a, c):
            print(f"check_libm_versions: pow({b!r}, {e!r}) = {a!r} @GLIBC_2.2.5 but {c!r} @GLIBC_2.29")
            return 1
        checked += 1
    print(f"check_libm_versions: exp, log, pow @GLIBC_2.2.5 equal @GLIBC_2.29 bit for bit (NaN as NaN) on {checked} inputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
