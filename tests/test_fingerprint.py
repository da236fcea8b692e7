"""Fingerprints are bitwise and position-sensitive: properties checked with hypothesis."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from audit.probes.run import fingerprint as fp

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
finite = st.floats(-1e4, 1e4, allow_nan=False, width=16)


INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64,
            torch.float16: torch.int16, torch.bfloat16: torch.int16}


@settings(max_examples=150, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=300), index=st.data(),
       dtype=st.sampled_from(FLOAT_DTYPES), step=st.sampled_from([-1, 1]))
def test_one_ulp_change_of_any_element_changes_the_fingerprint(values, index, dtype, step):
    t = torch.tensor(values, dtype=dtype)
    i = index.draw(st.integers(0, len(values) - 1))
    changed = t.clone()
    changed.view(INT_VIEW[dtype])[i] += step  # the next representable value up or down
    assert fp.fingerprint(changed) != fp.fingerprint(t)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(finite, min_size=2, max_size=300), pair=st.data(),
       dtype=st.sampled_from(FLOAT_DTYPES))
def test_swapping_two_unequal_elements_changes_the_fingerprint(values, pair, dtype):
    t = torch.tensor(values, dtype=dtype)
    i = pair.draw(st.integers(0, len(values) - 1))
    j = pair.draw(st.integers(0, len(values) - 1))
    assume(not torch.equal(t[i:i + 1].view(torch.uint8), t[j:j + 1].view(torch.uint8)))
    swapped = t.clone()
    swapped[[i, j]] = t[[j, i]]
    assert fp.fingerprint(swapped) != fp.fingerprint(t)


def test_a_sign_only_swap_is_seen():
    # +1.0 and -1.0 differ only in the sign bit: the case a 32-bit weighted sum would miss.
    t = torch.tensor([1.0, -1.0, 2.0])
    assert fp.fingerprint(t) != fp.fingerprint(torch.tensor([-1.0, 1.0, 2.0]))


@given(st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=50))
def test_equal_tensors_give_equal_fingerprints(values):
    a = torch.tensor(values, dtype=torch.int32)
    assert fp.fingerprint(a) == fp.fingerprint(a.clone())


def test_shape_and_dtype_are_part_of_the_fingerprint():
    t = torch.arange(6, dtype=torch.float32)
    assert fp.fingerprint(t) != fp.fingerprint(t.reshape(2, 3))
    assert fp.fingerprint(torch.zeros(4, dtype=torch.int32)) != fp.fingerprint(torch.zeros(4))


def test_non_contiguous_bool_and_complex_tensors():
    t = torch.randn(4, 5)
    assert fp.fingerprint(t.t()) == fp.fingerprint(t.t().contiguous())
    assert fp.fingerprint(torch.tensor([True, False])) != fp.fingerprint(torch.tensor([False, True]))
    c = torch.randn(3, dtype=torch.complex64)
    assert fp.fingerprint(c) != fp.fingerprint(c.conj().resolve_conj())


def test_row_fingerprints_tell_samples_apart_and_follow_them():
    x = torch.randn(5, 3, 4)
    rows = fp.row_fingerprints(x)
    assert len(set(rows)) == 5
    perm = [3, 1, 4, 0, 2]
    assert fp.row_fingerprints(x[perm]) == [rows[i] for i in perm]


def test_fingerprints_are_stable_across_processes():
    # No salted hash(): the same tensor gives the same fingerprint in any process.
    import subprocess
    import sys

    code = ("import torch; from audit.probes.run import fingerprint as fp; "
            "print(fp.as_text(fp.fingerprint(torch.arange(10.0).reshape(2, 5))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": "", "PYTHONPATH": ":".join(sys.path)},
                         check=True).stdout.strip()
    assert out == fp.as_text(fp.fingerprint(torch.arange(10.0).reshape(2, 5)))


def test_gather_keeps_ints_and_lists():
    assert fp.gather([5, [1, 2]]) == [5, [1, 2]]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fingerprints_stay_on_device_and_gather_once():
    t = torch.randn(1000, device="cuda")
    part = fp.fingerprint(t)
    assert isinstance(part, torch.Tensor) and part.device.type == "cuda" and part.dim() == 0
    rows = fp.row_fingerprints(t.reshape(10, 100))
    values = fp.gather([part, rows])
    assert isinstance(values[0], int) and len(values[1]) == 10
    swapped = t.clone()
    swapped[[0, 1]] = t[[1, 0]]
    assert fp.gather([fp.fingerprint(swapped)])[0] != values[0]
    scanned = fp.scan([t, t.half(), None])
    assert fp.gather(scanned.values[:2] + [scanned.finite]) == [values[0], fp.gather([fp.fingerprint(t.half())])[0], 1]
    broken = t.clone()
    broken[7] = float("nan")
    assert fp.gather([fp.scan([t, broken]).finite]) == [0]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20000), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_blocked_sums_equal_the_weighted_sum_and_see_changes_in_large_tensors(n, seed, data):
    t = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    words = fp.words(t).numpy().astype(np.int64)
    with np.errstate(over="ignore"):
        reference = int(((np.arange(n, dtype=np.int64) * 2 + 1) * words).sum() * np.int64(fp._C1))
    assert fp._cpu_dot(fp.words(t).numpy()) == reference
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1))
    changed = t.clone()
    changed.view(torch.int32)[i] += data.draw(st.sampled_from([-1, 1]))
    assert fp.fingerprint(changed) != fp.fingerprint(t)
    if t[i] != t[j]:
        swapped = t.clone()
        swapped[[i, j]] = t[[j, i]]
        assert fp.fingerprint(swapped) != fp.fingerprint(t)


def _reference(words: np.ndarray) -> int:
    w = words.astype(np.int64)
    with np.errstate(over="ignore"):
        return int(((np.arange(w.size, dtype=np.int64) * 2 + 1) * w).sum() * np.int64(fp._C1))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(4096, 70000), seed=st.integers(0, 2**31 - 1),
       extreme=st.sampled_from(["random", "max", "min", "both"]))
def test_row_sums_stay_exact_at_the_extremes_of_the_word_range(n, seed, extreme):
    """The float64 row sums are exact for any 32-bit words, the largest magnitudes included."""
    rng = np.random.default_rng(seed)
    words = rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32)
    if extreme != "random":
        pick = {"max": [2**31 - 1], "min": [-2**31], "both": [2**31 - 1, -2**31]}[extreme]
        words = rng.choice(np.array(pick, dtype=np.int32), n)
    assert fp._cpu_dot(words) == _reference(words)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), length=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1))
def test_row_fingerprints_equal_each_rows_fingerprint_sum(rows, length, seed):
    t = torch.randn(rows, length, generator=torch.Generator().manual_seed(seed))
    words = fp.words(t).numpy().reshape(rows, length)
    assert fp.row_fingerprints(t) == [_reference(r) for r in words]


SIZES = st.sampled_from([0, 1, 7, 1023, 1024, 4095, 4096, 5000, 9000])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16,
                          torch.int64, torch.uint8])


@settings(max_examples=40, deadline=None)
@given(specs=st.lists(st.tuples(SIZES, DTYPES), min_size=1, max_size=6),
       seed=st.integers(0, 2**31 - 1), gap=st.booleans())
def test_fingerprints_of_many_tensors_equal_each_tensors_own(specs, seed, gap):
    """Small tensors fingerprinted together, large ones one by one: each value is the tensor's
    own :func:`fingerprint` (a None keeps its place)."""
    g = torch.Generator().manual_seed(seed)
    tensors = [(torch.randn(n, generator=g) * 50).to(dtype) for n, dtype in specs]
    if gap:
        tensors.insert(len(tensors) // 2, None)
    expected = [None if t is None else fp.fingerprint(t) for t in tensors]
    assert fp.fingerprints(tensors) == expected
    assert fp.scan(tensors).values == expected


@settings(max_examples=40, deadline=None)
@given(specs=st.lists(st.tuples(SIZES.filter(bool), DTYPES), min_size=1, max_size=5),
       seed=st.integers(0, 2**31 - 1), data=st.data())
def test_scan_flags_a_single_non_finite_value_anywhere(specs, seed, data):
    g = torch.Generator().manual_seed(seed)
    tensors = [(torch.randn(n, generator=g) * 50).to(dtype) for n, dtype in specs]
    floats = [i for i, t in enumerate(tensors) if t.is_floating_point()]
    assert fp.scan(tensors).finite == 1
    if not floats:
        return
    k = data.draw(st.sampled_from(floats))
    i = data.draw(st.integers(0, tensors[k].numel() - 1))
    tensors[k][i] = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    assert fp.scan(tensors).finite == 0


def test_scan_sees_no_overflow_in_large_finite_values():
    t = torch.full((70000,), 3.0e38)
    big = torch.tensor([1e300, -1e300], dtype=torch.float64)  # beyond float32, still finite
    assert fp.scan([t, -t, big, big.repeat(3000)]).finite == 1
    assert fp.scan([torch.randn(3, dtype=torch.complex64)]).finite == 1  # no float extremes


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(), (3,), (5, 7), (4, 3, 32, 32), (2, 1025), (3, 0), (0, 4)]),
       dtype=DTYPES, seed=st.integers(0, 2**31 - 1))
def test_sample_fingerprints_give_the_rows_and_the_whole_from_one_read(shape, dtype, seed):
    t = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 50).to(dtype)
    rows, whole = fp.sample_fingerprints(t)
    assert whole == fp.fingerprint(t)
    if t.dim() and t.shape[0]:
        assert rows == [_reference(fp.words(row).numpy()) for row in t]
