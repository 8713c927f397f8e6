#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Runs the toml-test suite against a decoder (toml-test's decoder interface).

usage: run_toml_test.py DECODER SUITE_DIR [LIST_FILE]

DECODER reads TOML on stdin and writes tagged JSON on stdout, or exits
non-zero for invalid TOML. LIST_FILE names the cases, one path per line
relative to SUITE_DIR (e.g. files-toml-1.0.0); without it every valid/ and
invalid/ case under SUITE_DIR runs. For valid/X.toml the output must equal
valid/X.json semantically: same structure and types, floats compared
numerically (nan and inf included), date-times compared as instants.
invalid/X.toml must be rejected. A listed X.json only names the expected
output of X.toml. A listed X.multi holds one small document per line (the
suite generates its split cases from these); each line is run on its own.

Prints every failure, then "toml-test: N passed, N failed"; exits 1 if any
case failed.
"""

import json
import math
import os
import re
import subprocess
import sys

TIMEOUT = 10  # seconds per case; a hang is a failure, not a stuck run

LEAF_TYPES = {"string", "integer", "float", "bool", "datetime",
              "datetime-local", "date-local", "time-local"}

DT_RE = re.compile(
    r"^(?:(\d{4})-(\d{2})-(\d{2}))?"        # date
    r"(?:[T ]?(\d{2}):(\d{2})(?::(\d{2}))?"  # time (seconds optional in 1.1)
    r"(?:\.(\d+))?)?"                         # fraction
    r"(Z|[+-]\d{2}:\d{2})?$")                 # offset


def is_leaf(v):
    return (isinstance(v, dict) and set(v) == {"type", "value"}
            and isinstance(v["type"], str) and isinstance(v["value"], str))


def norm_datetime(text):
    """A comparable key for a date/time: an instant for offset date-times.

    Fractional seconds are truncated to nanoseconds and trailing zeros do
    not matter, as in toml-test (which compares parsed Go times).
    """
    m = DT_RE.match(text.strip().upper())
    if not m:
        return ("unparsable", text)
    y, mo, d, h, mi, s, frac, off = m.groups()
    frac = (frac or "")[:9].ljust(9, "0")
    date = (int(y), int(mo), int(d)) if y else None
    time = (int(h), int(mi), int(s or 0), frac) if h else None
    if not (date and time and off):
        return (date, time, None)
    # offset date-time: minutes since 0000-03-01 in UTC, then the fraction
    yy, mm = (int(y), int(mo)) if int(mo) > 2 else (int(y) - 1, int(mo) + 12)
    days = 365 * yy + yy // 4 - yy // 100 + yy // 400 + (153 * (mm - 3) + 2) // 5 + int(d)
    minutes = (days * 24 + int(h)) * 60 + int(mi)
    if off != "Z":
        sign = 1 if off[0] == "+" else -1
        minutes -= sign * (int(off[1:3]) * 60 + int(off[4:6]))
    return ("instant", minutes, int(s or 0), frac)


def leaf_equal(exp, got):
    t, ev, gv = exp["type"], exp["value"], got["value"]
    if t == "float":
        try:
            ef, gf = float(ev), float(gv)
        except ValueError:
            return False
        return (math.isnan(ef) and math.isnan(gf)) or ef == gf
    if t == "integer":
        try:
            return int(ev) == int(gv)
        except ValueError:
            return False
    if t in ("datetime", "datetime-local", "date-local", "time-local"):
        return norm_datetime(ev) == norm_datetime(gv)
    return ev == gv


def compare(exp, got, path="<root>"):
    """None if got matches exp, else a sentence saying where they differ."""
    if is_leaf(exp):
        if not is_leaf(got):
            return f"{path}: expected a {exp['type']} leaf, got {json.dumps(got)[:80]}"
        if exp["type"] not in LEAF_TYPES:
            return f"{path}: expected JSON has unknown type {exp['type']!r}"
        if got["type"] != exp["type"]:
            return f"{path}: type {got['type']!r}, expected {exp['type']!r}"
        if not leaf_equal(exp, got):
            return f"{path}: value {got['value']!r}, expected {exp['value']!r}"
        return None
    if isinstance(exp, dict):
        if not isinstance(got, dict) or is_leaf(got):
            return f"{path}: expected a table, got {json.dumps(got)[:80]}"
        if set(exp) != set(got):
            missing = sorted(set(exp) - set(got))
            extra = sorted(set(got) - set(exp))
            return f"{path}: keys differ: missing {missing}, unexpected {extra}"
        for k in exp:
            why = compare(exp[k], got[k], f"{path}.{k}")
            if why:
                return why
        return None
    if isinstance(exp, list):
        if not isinstance(got, list):
            return f"{path}: expected an array, got {json.dumps(got)[:80]}"
        if len(exp) != len(got):
            return f"{path}: array length {len(got)}, expected {len(exp)}"
        for i, (e, g) in enumerate(zip(exp, got)):
            why = compare(e, g, f"{path}[{i}]")
            if why:
                return why
        return None
    return f"{path}: unexpected expected-JSON value {exp!r}"


def run_decoder(decoder, data):
    """(exit status, stdout, stderr); status None on a timeout."""
    try:
        r = subprocess.run([decoder], input=data, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, b"", b"timed out"
    return r.returncode, r.stdout, r.stderr


def check_valid(decoder, data, expected_json):
    rc, out, err = run_decoder(decoder, data)
    if rc != 0:
        return f"rejected valid TOML (exit {rc}): {err.decode(errors='replace').strip()}"
    try:
        got = json.loads(out)
    except ValueError as e:
        return f"decoder printed invalid JSON: {e}"
    if expected_json is None:
        return None
    return compare(expected_json, got)


def check_invalid(decoder, data):
    rc, out, _ = run_decoder(decoder, data)
    if rc is None:
        return "timed out"
    if rc < 0:
        return f"decoder died of signal {-rc}"
    if rc == 0:
        return "accepted invalid TOML, output: " + out.decode(errors="replace").strip()[:120]
    return None


def multi_cases(path, text):
    """Split a .multi file into (name, bytes) cases, one per non-comment line.

    As in the suite's generator, a file whose header says so gets its
    "\\xNN" sequences replaced by the raw bytes.
    """
    raw = "replaced with literal control characters" in text
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        data = line.encode()
        if raw:
            data = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), data)
        yield f"{path}:{n}", data


def collect(suite, list_file):
    """The case paths (relative to suite) to run, in list order."""
    if list_file:
        with open(list_file, encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    else:
        names = []
        for top in ("valid", "invalid"):
            for d, _, files in sorted(os.walk(os.path.join(suite, top))):
                for fn in sorted(files):
                    if fn.endswith((".toml", ".multi")):
                        names.append(os.path.relpath(os.path.join(d, fn), suite))
    listed = set(names)
    cases = []
    for name in names:
        if name.endswith(".json"):
            # the expected output of X.toml; run X.toml if the list forgot it
            toml = name[:-5] + ".toml"
            if toml not in listed:
                listed.add(toml)
                cases.append(toml)
        elif name.endswith((".toml", ".multi")):
            cases.append(name)
        else:
            print(f"toml-test: skipping unknown list entry {name}", file=sys.stderr)
    return cases


def run_case(decoder, suite, name):
    """Yields (case name, failure or None) for one listed path."""
    path = os.path.join(suite, name)
    valid = name.startswith("valid/")
    if not valid and not name.startswith("invalid/"):
        yield name, "case is neither under valid/ nor invalid/"
        return
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        yield name, f"cannot read case: {e}"
        return
    if name.endswith(".multi"):
        for sub, doc in multi_cases(name, data.decode("utf-8", errors="replace")):
            yield sub, check_valid(decoder, doc, None) if valid else check_invalid(decoder, doc)
        return
    if not valid:
        yield name, check_invalid(decoder, data)
        return
    try:
        with open(path[:-5] + ".json", encoding="utf-8") as f:
            expected = json.load(f)
    except (OSError, ValueError) as e:
        yield name, f"cannot read expected JSON: {e}"
        return
    yield name, check_valid(decoder, data, expected)


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    decoder, suite = argv[1], argv[2]
    list_file = argv[3] if len(argv) == 4 else None
    passed = failed = 0
    for name in collect(suite, list_file):
        for case, why in run_case(decoder, suite, name):
            if why:
                failed += 1
                print(f"FAIL {case}: {why}")
            else:
                passed += 1
    print(f"toml-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
