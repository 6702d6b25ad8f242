"""EvalPlus's differential testing (evalplus 0.3.1, dataset "mbpp"), as it runs inside the sandbox.

The text of this file is the head of every MBPP+ program (tasks/evalplus_oracle.py appends one call),
so it imports nothing of qwen-eval and runs on any Python 3 with numpy. Two entry points:

    expected_outputs(code, entry_point, splits, output_not_none)
        The canonical solution on every input of each split, as EvalPlus's `trusted_exec` runs it
        (a fresh namespace per split, each input deep-copied, each call timed with time.time());
        writes one line to stdout: OUTPUT_MARK + JSON {split: {"times": [...], "expected": [...]}},
        each expected output a base64 zlib pickle (decoded only in the sandbox, never by the harness).

    check(solution, entry_point, inputs, expected, time_limits, atol, deadline, memory_bytes)
        EvalPlus's `unsafe_execute` with fast_check: the memory limits and disabled functions of its
        `reliability_guard`, the solution exec'd in a fresh namespace with its output swallowed, then
        each input under its own wall-clock limit (SIGALRM), compared with EvalPlus's rules (exact
        equality; its special oracles for MBPP tasks; floats with `atol`, which becomes 1e-6 for the
        rest of the inputs once a float output is met with atol 0, as in EvalPlus). Returns when
        every input passes; at the first that fails, writes REASON_MARK + JSON {"input", "reason"} to
        stderr and raises (the program fails). EvalPlus kills its process at `deadline` seconds
        (min(60, sum of the limits) + 2); a watchdog thread that needs no GIL ends this one there.

EvalPlus labels a process that ended without reporting (killed, crashed, os._exit) "timeout", one
that raised "fail": the harness reads the label from REASON_MARK (present: fail) and the sandbox.

EvalPlus compares floats with numpy.allclose. Where the sandbox's Python has no numpy, `allclose`
below does the same for numbers and nested sequences of numbers (numpy's isclose rule, broadcasting,
errors for anything else); tests/test_mbppplus.py checks it against numpy.
"""

import base64
import builtins
import cmath
import contextlib
import copy
import faulthandler
import io
import json
import math
import os
import pickle
import reprlib
import signal
import sys
import time
import zlib

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread: the sandbox caps processes
try:  # imported before the solution runs, as in EvalPlus's worker
    import numpy as np
except ImportError:
    np = None

OUTPUT_MARK = "EVALPLUS-EXPECTED-OUTPUTS "
REASON_MARK = "EVALPLUS-FAILED-INPUT "
NAN, INF, NEG_INF = float("nan"), float("inf"), float("-inf")  # one object each, as json.loads gives

# EvalPlus's special oracles for MBPP+ (evalplus/eval/_special_oracle.py), by entry point
OUTPUT_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
OUTPUT_SET_EQUAL = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                    "larg_nnum", "intersection_array", "find_dissimilar", "Diff")
# what EvalPlus's reliability_guard sets to None, module by module
DISABLED = {
    "builtins": ("exit", "quit", "help", "open"),
    "os": ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
           "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
           "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"),
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen",),
}
BLOCKED_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


def surface_area_oracle(base_edge, height):
    """Mbpp/581: the height is the pyramid's perpendicular height (EvalPlus's `_surface_Area`)."""
    slant_height = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    base_area = base_edge ** 2
    lateral_area = 4 * (base_edge * slant_height) / 2
    return round(base_area + lateral_area)


def digit_distance_oracle(num1, num2):
    """Mbpp/558: both numbers padded with zeros to the same length (EvalPlus's `_digit_distance_nums`)."""
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    if np is not None and isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def _array(value, expected, top=True):
    """(shape, flat values) of a number or a rectangular nested list/tuple of numbers, as
    numpy.asarray sees it; anything else raises as numpy's isclose does."""
    if isinstance(value, (bool, int, float, complex)):
        # in an array of expected values, an int beyond int64 and uint64 makes numpy hold objects,
        # on which isfinite fails (a lone Python int is converted to a float instead)
        if expected and not top and isinstance(value, int) and not -(1 << 63) <= value < (1 << 64):
            raise TypeError("ufunc 'isfinite' not supported for the input types")
        return (), [value]
    if isinstance(value, (list, tuple)):
        parts = [_array(v, expected, top=False) for v in value]
        shapes = {shape for shape, _ in parts}
        if len(shapes) > 1:
            raise ValueError("setting an array element with a sequence (inhomogeneous shape)")
        inner = parts[0][0] if parts else ()
        return (len(value),) + inner, [x for _, flat in parts for x in flat]
    raise TypeError(f"ufunc 'isfinite' not supported for the input types ({type(value).__name__})")


def _broadcast(a, b):
    shape = []
    for i in range(1, max(len(a), len(b)) + 1):
        x, y = (a[-i] if i <= len(a) else 1), (b[-i] if i <= len(b) else 1)
        if x != y and 1 not in (x, y):
            raise ValueError(f"operands could not be broadcast together with shapes {a} {b}")
        shape.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(reversed(shape))


def _flat_index(index, shape):
    """The position in a flat array of `shape` of a broadcast index (its trailing dimensions)."""
    offset = 0
    for i, size in zip(index[len(index) - len(shape):], shape):
        offset = offset * size + (i if size != 1 else 0)
    return offset


def _is_finite(y):
    return cmath.isfinite(y) if isinstance(y, complex) else math.isfinite(y)


def _close(x, y, rtol, atol):
    if not isinstance(y, complex):
        y = float(y)  # numpy makes the expected side inexact
    return (abs(x - y) <= atol + rtol * abs(y) and _is_finite(y)) or x == y


def _allclose(a, b, rtol=1e-05, atol=1e-08):
    """numpy.allclose(a, b, rtol, atol) for numbers and nested sequences of numbers."""
    shape_a, flat_a = _array(a, expected=False)
    shape_b, flat_b = _array(b, expected=True)
    shape = _broadcast(shape_a, shape_b)
    total = 1
    for size in shape:
        total *= size
    for n in range(total):
        index, rest = [], n
        for size in reversed(shape):
            index.append(rest % size)
            rest //= size
        index.reverse()
        if not _close(flat_a[_flat_index(index, shape_a)], flat_b[_flat_index(index, shape_b)], rtol, atol):
            return False
    return True


allclose = np.allclose if np is not None else _allclose


class WriteOnlyStringIO(io.StringIO):
    """Where the solution's prints go; reading from it (input()) raises, as in EvalPlus."""

    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


@contextlib.contextmanager
def swallow_io():
    stream = WriteOnlyStringIO()
    saved = sys.stdout, sys.stderr, sys.stdin
    sys.stdout = sys.stderr = sys.stdin = stream
    try:
        yield
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved


class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    def on_alarm(signum, frame):
        raise TimeLimit(f"over the {seconds:g} s limit")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


_REPR = reprlib.Repr()  # short reprs of outputs for the failure reason
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset, _REPR.maxdict = 4, 8, 8, 8, 8
_REPR.maxstring = _REPR.maxother = 120


def _short(value):
    try:
        return _REPR.repr(value)
    except BaseException:
        return "<unprintable>"


def _write_all(fd, text):
    data = memoryview(text.encode("utf-8", "backslashreplace"))
    while data:
        data = data[os.write(fd, data):]


def _report(index, reason):
    try:
        _write_all(2, "\n" + REASON_MARK + json.dumps({"input": index, "reason": reason[:1000]}) + "\n")
    except BaseException:
        pass


def _describe(error):
    try:
        text = str(error)
    except BaseException:
        text = ""
    return type(error).__name__ + (": " + text if text else "")


def decode(blob):
    return pickle.loads(zlib.decompress(base64.b64decode(blob)))


def encode(value):
    return base64.b64encode(zlib.compress(pickle.dumps(value, protocol=4), 6)).decode("ascii")


def expected_outputs(code, entry_point, splits, output_not_none):
    result = {}
    saved = sys.stdout
    sys.stdout = WriteOnlyStringIO()  # the canonical solution's own prints are not the answer
    try:
        for name, inputs in splits.items():
            namespace = {}
            exec(code, namespace)
            fn = namespace[entry_point]
            outputs, times = [], []
            for inp in inputs:
                inp = copy.deepcopy(inp)
                start = time.time()
                outputs.append(fn(*inp))
                times.append(time.time() - start)
            if output_not_none:
                outputs = [out is not None for out in outputs]
            result[name] = {"times": times, "expected": [encode(out) for out in outputs]}
    finally:
        sys.stdout = saved
    result["numpy"] = getattr(np, "__version__", None)
    _write_all(1, OUTPUT_MARK + json.dumps(result) + "\n")


def _limit_memory(memory_bytes):
    import resource

    for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK):
        try:
            resource.setrlimit(which, (memory_bytes, memory_bytes))
        except (ValueError, OSError):  # above the hard limit the sandbox set: keep that
            pass


def _disable_destructive_functions():
    import shutil
    import subprocess

    faulthandler.disable()
    os.environ["OMP_NUM_THREADS"] = "1"
    modules = {"builtins": builtins, "os": os, "shutil": shutil, "subprocess": subprocess}
    for module, names in DISABLED.items():
        for name in names:
            setattr(modules[module], name, None)
    for name in BLOCKED_MODULES:
        sys.modules[name] = None


def _matches(out, exp, inp, entry_point, atol):
    """EvalPlus's comparison of one output (raises when it does not match); returns the atol for
    the inputs after this one."""
    exact_match = out == exp
    if "are_equivalent" == entry_point:  # Mbpp/164
        exact_match = exact_match or True
    elif "sum_div" == entry_point:  # Mbpp/295
        exact_match = exact_match or out == 0
    elif "surface_Area" == entry_point:  # Mbpp/581
        exact_match = exact_match or abs(out - surface_area_oracle(*inp)) <= atol
    elif "digit_distance_nums" == entry_point:  # Mbpp/558
        exact_match = exact_match or out == digit_distance_oracle(*inp)
    elif entry_point in OUTPUT_SET_EQUAL:
        exact_match = set(out) == set(exp)
    elif entry_point in OUTPUT_NOT_NONE:
        if isinstance(out, bool):
            exact_match = out == exp
        else:
            exact_match = exp == (out is not None)
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact_match and atol != 0:
        if not type(out) == type(exp):
            raise AssertionError(f"output type {type(out).__name__}, expected {type(exp).__name__}")
        if isinstance(exp, (list, tuple)):
            if not len(out) == len(exp):
                raise AssertionError(f"output length {len(out)}, expected {len(exp)}")
        if not allclose(out, exp, rtol=1e-07, atol=atol):
            raise AssertionError(f"got {_short(out)}, expected {_short(exp)} (atol {atol:g})")
    elif not exact_match:
        raise AssertionError(f"got {_short(out)}, expected {_short(exp)}")
    return atol


def check(solution, entry_point, inputs, expected, time_limits, atol, deadline, memory_bytes):
    expected = [decode(blob) for blob in expected]
    faulthandler.dump_traceback_later(deadline, exit=True)
    _limit_memory(memory_bytes)
    _disable_destructive_functions()
    namespace = {}
    try:
        with swallow_io():
            exec(solution, namespace)
            fn = namespace[entry_point]
    except BaseException as error:
        if isinstance(error, KeyError) and entry_point not in namespace:
            _report(None, f"the solution defines no {entry_point}")
        else:
            _report(None, "the solution failed to run: " + _describe(error))
        raise
    for i, inp in enumerate(inputs):
        try:
            with time_limit(time_limits[i]):
                with swallow_io():
                    out = fn(*inp)
            atol = _matches(out, expected[i], inp, entry_point, atol)
        except BaseException as error:
            _report(i, _describe(error))
            raise
