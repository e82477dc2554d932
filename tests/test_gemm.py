"""sgemm: every compiled micro-kernel variant runnable on this CPU against the naive
reference twin ("ref"), on odd and edge shapes, all transpose combinations, alpha/beta cases;
plus the CPU report, thread control and the CHAINRULE_CPU_TARGET override. Correctness only:
no timing here (bench/gemm_bench.cpp does that)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from chainrule import _core, system

VARIANTS = [v for v in _core._gemm_variants() if v != "ref"]

# (M, N, K): 1x1x1, primes, non-multiples of every register tile (4x8, 6x16, 8x32, 12x32,
# 24x16, 32xN), k = 1, large k, the narrow N of a 10-class layer (column, dot-product and
# in-place paths), and the small-MLP shapes.
SHAPES = [
    (1, 1, 1), (7, 13, 17), (13, 7, 17), (1, 33, 5), (33, 1, 5), (12, 32, 1), (11, 31, 3),
    (25, 65, 2), (5, 15, 63), (37, 3, 3000), (128, 10, 256), (256, 10, 128), (64, 8, 40),
    (97, 131, 389), (130, 530, 70), (300, 40, 20), (2, 1000, 7), (1000, 3, 9), (33, 17, 31),
    (32, 32, 784), (40, 20, 33), (16, 25, 7), (129, 7, 200),
]
ALPHA_BETA = [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (-1.5, 0.25), (2.0, -1.0)]


def make_operands(rng, M, N, K, trans_a, trans_b):
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    return A, B


def expected(A, B, C0, trans_a, trans_b, alpha, beta):
    a = A.astype(np.float64).T if trans_a else A.astype(np.float64)
    b = B.astype(np.float64).T if trans_b else B.astype(np.float64)
    out = alpha * (a @ b)
    if beta != 0.0:
        out += beta * C0.astype(np.float64)
    return out


def test_variants_listed():
    assert _core._gemm_variants()[0] == "ref"
    assert "generic" in VARIANTS
    info = system.cpu_info()
    # the chosen kernel is runnable, and every runnable SIMD variant is one the CPU supports
    assert info["kernel"] in VARIANTS
    feats = info["features"]
    if "avx512" in VARIANTS:
        assert feats["avx512f"] and feats["os_avx512"]
    if "avx2" in VARIANTS:
        assert feats["avx2"] and feats["fma"]


@pytest.mark.parametrize("variant", ["ref"] + VARIANTS)
@pytest.mark.parametrize("trans_a,trans_b",
                         [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_float64(variant, trans_a, trans_b):
    """Against an independent float64 oracle (numpy), so 'ref' itself is checked too."""
    rng = np.random.default_rng(0)
    for M, N, K in SHAPES:
        A, B = make_operands(rng, M, N, K, trans_a, trans_b)
        for alpha, beta in ALPHA_BETA:
            C0 = rng.standard_normal((M, N)).astype(np.float32)
            C = C0.copy()
            _core._gemm(variant, trans_a, trans_b, A, B, C, alpha, beta)
            want = expected(A, B, C0, trans_a, trans_b, alpha, beta)
            tol = 1e-5 * np.sqrt(K) * (abs(alpha) * 4 + 1) * 4
            np.testing.assert_allclose(C, want, rtol=1e-4, atol=tol,
                                       err_msg=f"{variant} M={M} N={N} K={K} ta={trans_a} "
                                               f"tb={trans_b} alpha={alpha} beta={beta}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_gemm_matches_ref(variant):
    rng = np.random.default_rng(1)
    for M, N, K in SHAPES:
        for trans_a in (False, True):
            for trans_b in (False, True):
                A, B = make_operands(rng, M, N, K, trans_a, trans_b)
                C0 = rng.standard_normal((M, N)).astype(np.float32)
                C_ref, C = C0.copy(), C0.copy()
                _core._gemm("ref", trans_a, trans_b, A, B, C_ref, -0.75, 0.5)
                _core._gemm(variant, trans_a, trans_b, A, B, C, -0.75, 0.5)
                np.testing.assert_allclose(C, C_ref, rtol=1e-4, atol=1e-5 * np.sqrt(K) * 8)


@pytest.mark.parametrize("variant", ["ref"] + VARIANTS)
def test_beta_zero_ignores_nan_in_c(variant):
    rng = np.random.default_rng(2)
    for M, N, K in [(1, 1, 1), (7, 13, 17), (128, 10, 256), (97, 131, 389), (64, 8, 40)]:
        for trans_a in (False, True):
            for trans_b in (False, True):
                A, B = make_operands(rng, M, N, K, trans_a, trans_b)
                C = np.full((M, N), np.nan, dtype=np.float32)
                _core._gemm(variant, trans_a, trans_b, A, B, C, 1.0, 0.0)
                assert np.isfinite(C).all(), (variant, M, N, K, trans_a, trans_b)
                np.testing.assert_allclose(C, expected(A, B, C, trans_a, trans_b, 1.0, 0.0),
                                           rtol=1e-4, atol=1e-5 * np.sqrt(K) * 8)


# The packed path copies A into register-tile panels from either layout: a plain A (each
# row's run contiguous in K: a transposing copy) or a transposed one (each K step's rows
# contiguous). Whichever packer runs, the panels, and so the bits, must be the same.
# Shapes: the 12x32 tile (N > 32) with ragged panels and K % 8 != 0, the 24x16 tile (N = 40),
# K = 13 (under one 8-step), K above the K block, N <= 32 with M a multiple of 8 (8x32).
LAYOUT_SHAPES = [(97, 131, 389), (130, 40, 70), (64, 530, 13), (40, 520, 800), (300, 48, 33),
                 (24, 64, 8), (7, 100, 9), (256, 512, 784), (64, 32, 100)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_layouts_give_the_same_bits(variant):
    rng = np.random.default_rng(11)
    for M, N, K in LAYOUT_SHAPES:
        A = rng.standard_normal((M, K)).astype(np.float32)
        B = rng.standard_normal((K, N)).astype(np.float32)
        plain = np.zeros((M, N), np.float32)
        transposed = np.zeros((M, N), np.float32)
        _core._gemm(variant, False, False, A, B, plain, 1.0, 0.0)
        _core._gemm(variant, True, False, np.ascontiguousarray(A.T), B, transposed, 1.0, 0.0)
        np.testing.assert_allclose(plain, expected(A, B, plain, False, False, 1.0, 0.0),
                                   rtol=1e-4, atol=1e-5 * np.sqrt(K) * 8)
        assert np.array_equal(plain, transposed), (variant, M, N, K)


@pytest.mark.parametrize("variant", VARIANTS)
def test_large_k_and_multithreaded_split(variant):
    """Big enough to take the OpenMP path (when threads > 1) and several K blocks."""
    rng = np.random.default_rng(3)
    old = system.get_num_threads()
    try:
        system.set_num_threads(2)
        for M, N, K, ta, tb in [(130, 530, 785, False, False), (128, 784, 512, False, True),
                                (784, 512, 128, True, False), (256, 10, 1000, True, False),
                                (1000, 10, 256, False, False)]:
            A, B = make_operands(rng, M, N, K, ta, tb)
            C = np.full((M, N), np.nan, dtype=np.float32)
            _core._gemm(variant, ta, tb, A, B, C, 1.0, 0.0)
            np.testing.assert_allclose(C, expected(A, B, C, ta, tb, 1.0, 0.0), rtol=1e-4,
                                       atol=1e-5 * np.sqrt(K) * 8)
    finally:
        system.set_num_threads(old)


def test_degenerate_sizes():
    for variant in ["ref"] + VARIANTS:
        # K == 0: C = beta*C, and beta == 0 overwrites NaN with zeros
        A = np.zeros((3, 0), np.float32)
        B = np.zeros((0, 4), np.float32)
        C = np.full((3, 4), np.nan, np.float32)
        _core._gemm(variant, False, False, A, B, C, 1.0, 0.0)
        np.testing.assert_array_equal(C, 0.0)
        C = np.full((3, 4), 2.0, np.float32)
        _core._gemm(variant, False, False, A, B, C, 1.0, 0.5)
        np.testing.assert_array_equal(C, 1.0)
        # M == 0 / N == 0: nothing to do, no crash
        _core._gemm(variant, False, False, np.zeros((0, 5), np.float32),
                    np.ones((5, 4), np.float32), np.zeros((0, 4), np.float32), 1.0, 0.0)
        _core._gemm(variant, False, False, np.ones((3, 5), np.float32),
                    np.ones((5, 0), np.float32), np.zeros((3, 0), np.float32), 1.0, 0.0)


def test_gemm_validates_arguments():
    A = np.ones((4, 5), np.float32)
    B = np.ones((5, 6), np.float32)
    C = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="variant"):
        _core._gemm("sse9", False, False, A, B, C, 1.0, 0.0)
    with pytest.raises(ValueError, match="A"):
        _core._gemm("generic", False, False, A.astype(np.float64), B, C, 1.0, 0.0)
    with pytest.raises(ValueError, match="B"):
        _core._gemm("generic", False, False, A, np.ones((5, 6, 1), np.float32), C, 1.0, 0.0)
    with pytest.raises(ValueError, match="C"):
        _core._gemm("generic", False, False, A, B, np.zeros((6, 4), np.float32).T, 1.0, 0.0)
    with pytest.raises(ValueError, match="C"):
        _core._gemm("generic", False, False, A, B, np.zeros((4, 7), np.float32), 1.0, 0.0)
    with pytest.raises(ValueError, match="inner dimensions"):
        _core._gemm("generic", False, True, A, B, C, 1.0, 0.0)
    with pytest.raises(ValueError, match="A"):
        _core._gemm("generic", False, False, np.ones((5, 10), np.float32)[:, ::2], B, C, 1.0, 0.0)
    ro = C.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="C"):
        _core._gemm("generic", False, False, A, B, ro, 1.0, 0.0)


def test_gemm_writes_in_place():
    A = np.ones((4, 5), np.float32)
    B = np.ones((5, 6), np.float32)
    C = np.zeros((4, 6), np.float32)
    before = C.__array_interface__["data"][0]
    _core._gemm(VARIANTS[-1], False, False, A, B, C, 1.0, 0.0)
    assert C.__array_interface__["data"][0] == before
    np.testing.assert_array_equal(C, 5.0)


def test_unrunnable_variant_is_value_error():
    for v in ("generic", "avx2", "avx512"):
        if v not in VARIANTS:
            with pytest.raises(ValueError, match="cannot run"):
                _core._gemm(v, False, False, np.ones((2, 2), np.float32),
                            np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32), 1.0, 0.0)


def test_num_threads_roundtrip():
    old = system.get_num_threads()
    try:
        system.set_num_threads(1)
        assert system.get_num_threads() == 1
        if system.cpu_info()["openmp"]:
            system.set_num_threads(3)
            assert system.get_num_threads() == 3
    finally:
        system.set_num_threads(old)
    assert system.get_num_threads() == old


@pytest.mark.parametrize("bad", [0, -2])
def test_set_num_threads_rejects_nonpositive(bad):
    with pytest.raises(ValueError, match=rf"n=\s*{bad}"):
        system.set_num_threads(bad)


def test_cpu_info_contents():
    info = system.cpu_info()
    for key in ("features", "kernel", "best_kernel", "env_override", "variants", "openmp",
                "max_threads"):
        assert key in info
    for feat in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "os_avx512"):
        assert isinstance(info["features"][feat], bool)
    assert info["kernel"] in ("generic", "avx2", "avx512")
    assert info["max_threads"] == system.get_num_threads() >= 1
    assert info["variants"] == _core._gemm_variants()
    # without an override, the best kernel is chosen
    if not os.environ.get("CHAINRULE_CPU_TARGET"):
        assert info["kernel"] == info["best_kernel"]
        assert info["env_override"] is None


def test_cpu_identity_matches_proc_cpuinfo():
    # The CPU's identity as the core reads it from cpuid, against the kernel's own reading
    # of the same registers (Linux /proc/cpuinfo, first processor).
    info = system.cpu_info()
    for key, kind in (("vendor", str), ("brand", str), ("family", int), ("model", int),
                      ("stepping", int)):
        assert isinstance(info[key], kind), key
    if not info["x86"] or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs x86 Linux (/proc/cpuinfo)")
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break  # the first processor only
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    assert info["vendor"] == fields["vendor_id"]
    assert info["family"] == int(fields["cpu family"])
    assert info["model"] == int(fields["model"])
    assert info["stepping"] == int(fields["stepping"])
    assert " ".join(info["brand"].split()) == " ".join(fields["model name"].split())


def _info_in_subprocess(value):
    env = dict(os.environ, CHAINRULE_CPU_TARGET=value)
    code = ("import json, numpy as np; from chainrule import system, _core; "
            "A = np.ones((7, 9), np.float32); B = np.ones((9, 5), np.float32); "
            "C = np.zeros((7, 5), np.float32); "
            "_core._gemm(system.cpu_info()['kernel'], False, False, A, B, C, 1.0, 0.0); "
            "assert (C == 9).all(); "
            "print(json.dumps(system.cpu_info()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_env_override_generic():
    info = _info_in_subprocess("generic")
    assert info["kernel"] == "generic"
    assert info["env_override"] == "generic"


def test_env_override_clamps_and_ignores_unknown():
    best = system.cpu_info()["best_kernel"]
    # asking for more than the CPU runs is clamped to the best available
    assert _info_in_subprocess("avx512")["kernel"] == best
    # an unknown value falls back to auto, no crash
    info = _info_in_subprocess("definitely-not-a-target")
    assert info["kernel"] == best
    assert info["env_override"] == "definitely-not-a-target"
    if best == "avx512":
        assert _info_in_subprocess("avx2")["kernel"] == "avx2"


# A few rows of a wide product (batch-1 inference) are computed from B in place, without
# packing: the same bits as those rows inside a larger batch, and correct against float64.
# Shapes: the MNIST MLP's first layer, several K blocks (K > kc), N not a multiple of the
# 64-column chunk, a narrow-kernel N (24x16 tile), N at or below the register tile's width
# (the 10-class output layer: the column kernel in a batch), N exactly one register tile wide
# with K above the tile's K block (the batch path reads B in place and does not split K),
# and a row count of every size up to 4.
ROW_SHAPES = [(512, 784), (100, 1100), (40, 37), (200, 1537), (48, 300), (10, 256), (10, 1100),
              (7, 33), (16, 300), (130, 64), (32, 676), (16, 676)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("N,K", ROW_SHAPES)
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_a_few_rows_equal_the_same_rows_of_a_batch(variant, N, K, beta):
    rng = np.random.default_rng(N * 7 + K)
    A = rng.standard_normal((40, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C0 = rng.standard_normal((40, N)).astype(np.float32)
    full = C0.copy()
    _core._gemm(variant, False, False, A, B, full, 1.0, beta)
    np.testing.assert_allclose(full, expected(A, B, C0, False, False, 1.0, beta), rtol=1e-4, atol=1e-3)
    for m in (1, 2, 3, 4, 5):
        for start in (0, 7, 35):
            part = C0[start:start + m].copy()
            _core._gemm(variant, False, False, np.ascontiguousarray(A[start:start + m]), B, part, 1.0, beta)
            assert np.array_equal(part, full[start:start + m]), (variant, N, K, beta, m, start)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_few_rows_split_over_threads_give_the_same_bits(variant):
    # Above a size the rows path splits the columns over the threads (in blocks of 128):
    # each column's sums are the same operations on any thread count, and equal to those
    # rows inside a batch. N = 1000: 8 blocks, the last one short.
    rng = np.random.default_rng(5)
    A = rng.standard_normal((40, 784)).astype(np.float32)
    B = rng.standard_normal((784, 1000)).astype(np.float32)
    full = np.zeros((40, 1000), np.float32)
    _core._gemm(variant, False, False, A, B, full)
    old = system.get_num_threads()
    try:
        for threads in (1, 2, 3):
            system.set_num_threads(threads)
            for m in (1, 4):
                part = np.zeros((m, 1000), np.float32)
                _core._gemm(variant, False, False, np.ascontiguousarray(A[3:3 + m]), B, part)
                assert np.array_equal(part, full[3:3 + m]), (variant, threads, m)
    finally:
        system.set_num_threads(old)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("K", [300, 600, 784, 1100])
def test_a_few_rows_split_over_k_give_the_same_bits(variant, K):
    # With K in exactly two K blocks (784 and 600 with the AVX-512 blocking, 300 with AVX2's)
    # the rows path also splits K over the threads: the last block's sums are added to C
    # after the others, the same addition as on one thread. Other K: columns only. Both
    # beta = 0 and beta = 1 (C accumulated), 1 to 4 rows, 2 to 4 threads (4: two column
    # groups per K half).
    rng = np.random.default_rng(K)
    N = 700
    A = rng.standard_normal((40, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C0 = rng.standard_normal((40, N)).astype(np.float32)
    old = system.get_num_threads()
    try:
        for beta in (0.0, 1.0):
            system.set_num_threads(1)
            full = C0.copy()
            _core._gemm(variant, False, False, A, B, full, 1.0, beta)
            np.testing.assert_allclose(full, expected(A, B, C0, False, False, 1.0, beta), rtol=1e-4,
                                       atol=1e-3)
            for threads in (1, 2, 3, 4):
                system.set_num_threads(threads)
                for m in (1, 2, 3, 4):
                    part = C0[5:5 + m].copy()
                    _core._gemm(variant, False, False, np.ascontiguousarray(A[5:5 + m]), B, part, 1.0, beta)
                    assert np.array_equal(part, full[5:5 + m]), (variant, K, beta, threads, m)
    finally:
        system.set_num_threads(old)
