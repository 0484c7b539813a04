"""Fuzzing what users write: device / core / back-end / space YAML, measurement CSVs, budgets,
durations and integer options.

Each loader either returns its value or raises its documented error (``SpecError`` for YAML
configs, ``BadInput`` for measurement CSVs and typed values) — never another exception, never a
hang (``no_hang`` fails an example that runs longer than ``HANG_S``). Inputs are the shipped files
mutated (a field replaced by a value of another type, deleted, or a cell changed) and raw text.
"""
import copy
import csv
import io
import math
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codesign.calibrate import read_measurements
from codesign.userinput import BUDGET_UNITS, BadInput, parse_budget, parse_duration, parse_int
from codesign.cost_models.backends import BackendSpec, load_backend, parse_backend
from codesign.cost_models.devices import CONFIG_DIR, DeviceSpec, SpecError, load_device, load_yaml
from codesign.search_spaces.mbconv import MBConvConfig, MBConvSpace, load_mbconv_config

HANG_S = 10
EXAMPLES = int(os.environ.get("CODESIGN_FUZZ_EXAMPLES", "60"))  # more for a deeper local run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
DATA = Path(__file__).parent / "data"
_TMP = Path(tempfile.mkdtemp(prefix="codesign-fuzz-"))


@contextmanager
def no_hang(seconds: float = HANG_S):
    def alarm(signum, frame):
        raise AssertionError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def write(name: str, content: str | bytes) -> Path:
    path = _TMP / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- mutations
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(-5, 5), st.text(max_size=4)),
                    max_size=3))


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


ODD_KEYS = st.one_of(st.integers(-3, 3), st.text(max_size=6), st.booleans())


@st.composite
def mutated(draw, base):
    """``base`` with 1-3 fields replaced by odd values, deleted, or renamed to odd keys."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "rename"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(ODD_KEYS)] = parent.pop(path[-1])
        else:
            parent[path[-1]] = draw(ODD_VALUES)
    return data


def _base(kind: str, name: str):
    return yaml.safe_load((CONFIG_DIR / kind / f"{name}.yaml").read_text())


def dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


def loads_or_names_a_file(path, *also) -> None:
    """The device file loads to a spec, or its SpecError names the device file or one of
    ``also`` (a core file's error is about the core file)."""
    with no_hang():
        try:
            assert isinstance(load_device(str(path)), DeviceSpec)
        except SpecError as exc:
            assert any(str(p) in str(exc) for p in (path, *also)), str(exc)


# ----------------------------------------------------------------------------- device YAML
@FUZZ
@given(mutated(_base("devices", "pixel8")))
def test_device_yaml_mutations_load_or_raise_specerror(data):
    loads_or_names_a_file(write("device.yaml", dump(data)))


_ON_CORE = _base("devices", "pixel8")
_ON_CORE["cpu"]["clusters"][0]["core"] = "core.yaml"  # the mutated core file, beside it


@FUZZ
@given(mutated(_base("cores", "cortex-x3")))
def test_core_yaml_mutations_load_or_raise_specerror(data):
    """A mutated core file under a device that names it: a spec, or a SpecError naming the core
    file (a core file's error is about the core file) or the device file."""
    core = write("core.yaml", dump(data))
    loads_or_names_a_file(write("on-core.yaml", dump(_ON_CORE)), core)


@FUZZ
@given(mutated(_base("devices", "host")))
def test_host_template_mutations_load_or_raise_specerror(data):
    loads_or_names_a_file(write("host.yaml", dump(data)))


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_device_yaml_raw_text_loads_or_raises_specerror(content):
    loads_or_names_a_file(write("raw.yaml", content))


# ----------------------------------------------------------------------------- back-end YAML
@FUZZ
@given(mutated(_base("backends", "codesign")) | mutated(_base("backends", "xnnpack")))
def test_backend_yaml_mutations_parse_or_raise_specerror(data):
    path = write("backend.yaml", dump(data))
    with no_hang():
        try:
            raw, _ = load_yaml(path)
            assert isinstance(parse_backend(raw, str(path)), BackendSpec)
        except SpecError as exc:
            assert str(path) in str(exc)


# ----------------------------------------------------------------------------- space YAML
@FUZZ
@given(mutated(_base("spaces", "mbconv")))
def test_space_yaml_mutations_load_or_raise_specerror(data):
    path = write("space.yaml", dump(data))
    with no_hang():
        try:
            config = load_mbconv_config(path)
            assert isinstance(config, MBConvConfig)
            for backend in ("codesign", "xnnpack"):  # what a search does with it next
                MBConvSpace(load_backend(backend), config=config)
        except SpecError as exc:
            assert str(path) in str(exc) or "space" in str(exc)


# ----------------------------------------------------------------------------- measurement CSV
def _csv_rows(name: str, n: int = 4) -> list[list[str]]:
    with open(DATA / name, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[:n + 1]


CSV_BASES = {"nasbench201": _csv_rows("nasbench201_latency_ms_600.csv"),
             "fbnet": _csv_rows("fbnet_latency_ms_600.csv")}
CELL = st.one_of(st.text(max_size=40), st.sampled_from(["", "0", "-1", "nan", "inf", "1e400",
                                                         "|nor_conv_3x3~0|", "skip k3_e1"]))


@st.composite
def mutated_csv(draw):
    space = draw(st.sampled_from(sorted(CSV_BASES)))
    rows = copy.deepcopy(CSV_BASES[space])
    for _ in range(draw(st.integers(1, 3))):
        r = draw(st.integers(0, len(rows) - 1))
        action = draw(st.sampled_from(["cell", "drop_cell", "add_cell", "drop_row", "raw_line"]))
        if action == "cell" and rows[r]:
            rows[r][draw(st.integers(0, len(rows[r]) - 1))] = draw(CELL)
        elif action == "drop_cell" and rows[r]:
            rows[r].pop(draw(st.integers(0, len(rows[r]) - 1)))
        elif action == "add_cell":
            rows[r].append(draw(CELL))
        elif action == "drop_row":
            rows.pop(r)
            if not rows:
                break
        else:
            rows.insert(r, [draw(st.text(max_size=60))])
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return space, buf.getvalue()


def reads_or_names_the_csv(space: str, path) -> None:
    """A table of positive latencies, one per (architecture, column), or a BadInput naming
    the file."""
    with no_hang():
        try:
            table = read_measurements(space, path)
        except BadInput as exc:
            assert str(path) in str(exc)
        else:
            assert table.latency_ms.shape == (len(table.archs), len(table.columns))
            assert (table.latency_ms > 0).all()


@FUZZ
@given(mutated_csv())
def test_measurement_csv_mutations_read_or_raise_badinput(case):
    space, text = case
    reads_or_names_the_csv(space, write("measured.csv", text))


@FUZZ
@given(st.sampled_from(sorted(CSV_BASES) + ["mbconv"]),
       st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_measurement_csv_raw_content_reads_or_raises_badinput(space, content):
    reads_or_names_the_csv(space, write("raw.csv", content))


# ----------------------------------------------------------------------------- budgets
DURATION_TEXT = st.one_of(st.text(max_size=16),  # anything, and what looks like a duration
                          st.from_regex(r"\A\s?[-+]?[0-9]{0,4}\.?[0-9]{0,4}([eE][-+]?[0-9]{1,3})?"
                                        r"\s?[a-zA-Zµμ]{0,3}\s?\Z"))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(DURATION_TEXT)
def test_parse_budget_returns_positive_seconds_or_raises_badinput(text):
    try:
        seconds = parse_budget(text)
    except BadInput as exc:
        assert "\n" not in str(exc)
    else:
        assert math.isfinite(seconds) and seconds > 0


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False),
       st.sampled_from(sorted(BUDGET_UNITS) + ["μs"]), st.sampled_from(["", " "]))
def test_parse_budget_reads_what_it_is_given(value, unit, space):
    assert parse_budget(f"{value!r}{space}{unit}") == pytest.approx(
        value * BUDGET_UNITS.get(unit, 1e-6))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(DURATION_TEXT)
def test_parse_duration_with_bare_seconds_returns_positive_seconds_or_raises_badinput(text):
    """``--timeout``'s rule: ``parse_budget``'s, a number without a unit meaning seconds."""
    try:
        seconds = parse_duration(text, "--timeout", bare_unit="s")
    except BadInput as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"--timeout {text!r} ")
    else:
        assert math.isfinite(seconds) and seconds > 0


# ----------------------------------------------------------------------------- integers
@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(st.text(max_size=8), st.from_regex(r"\A\s?[-+]?[0-9]{0,6}(\.[0-9]?)?\s?\Z"),
                 st.integers(-10, 10), st.floats(), st.booleans(), st.none()),
       st.integers(0, 2), st.one_of(st.none(), st.integers(2, 5)))
def test_parse_int_returns_an_int_in_range_or_raises_badinput(value, low, high):
    """The rule of every integer option: decimal digits only, within [low, high]."""
    try:
        number = parse_int(value, "--n", low=low, high=high)
    except BadInput as exc:
        assert "\n" not in str(exc) and str(exc).startswith("--n must be an integer ")
        assert str(exc).endswith(f", got {value!r}")
    else:
        assert type(number) is int and low <= number and (high is None or number <= high)
        assert isinstance(value, int) or value.strip().lstrip("+-").isdigit()
        assert number == int(value)
