# SPDX-License-Identifier: MPL-2.0
"""Black-box tests of the `cella` command line.

Run: /usr/bin/python3 -m pytest tests/cli
The binary is $CELLA_BUILD_DIR/src/cli/cella (default /work/main/build).
"""
import copy
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CELLA_BUILD_DIR", "/work/main/build"))
CELLA = BUILD / "src" / "cli" / "cella"
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

OK, INVALID, USAGE, DIFFERENT = 0, 1, 2, 3


def cella(*args, stdin=None, cwd=None):
    if not CELLA.exists():
        pytest.skip(f"{CELLA} is not built")
    return subprocess.run(
        [str(CELLA), *map(str, args)],
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def small_spec(tmp_path):
    """The small example converted to JSON: (path, decoded object)."""
    r = cella("spec", "from-toml", ROOT / "examples" / "small.toml")
    assert r.returncode == OK, r.stderr
    path = tmp_path / "small.json"
    path.write_text(r.stdout)
    return path, json.loads(r.stdout)


# ---- from-toml and check ----


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"small.toml", "nvme-bridge-2nic.toml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_from_toml_output_passes_check(example, tmp_path):
    r = cella("spec", "from-toml", example)
    assert r.returncode == OK, r.stderr
    assert r.stderr == ""
    assert r.stdout.endswith("}\n")
    spec = json.loads(r.stdout)
    assert set(spec) == {"board", "components"}
    # Pretty-printed with sorted keys: re-dumping gives the same text.
    assert r.stdout == json.dumps(spec, indent=2, sort_keys=True) + "\n"
    out = tmp_path / "spec.json"
    out.write_text(r.stdout)
    c = cella("spec", "check", out)
    assert (c.returncode, c.stdout) == (OK, "ok\n"), c.stdout + c.stderr


def test_from_toml_is_deterministic():
    example = ROOT / "examples" / "nvme-bridge-2nic.toml"
    a = cella("spec", "from-toml", example)
    b = cella("spec", "from-toml", example)
    assert a.returncode == OK and a.stdout == b.stdout


def test_from_toml_contents(small_spec):
    _, spec = small_spec
    assert spec["board"]["cpus"] == 2
    assert spec["board"]["memory_mb"] == 512
    comps = spec["components"]
    assert comps["disk0"]["type"] == "virtio_disk"
    assert comps["root"]["component"]["block_size"] == 512
    assert comps["com1"] == {"type": "serial_port", "component": {"num": "com1"}}
    assert comps["boot-settings"]["component"]["order"] == [{"id": "disk0"}]


def test_from_toml_nvme_serial_and_nic_backend():
    r = cella("spec", "from-toml", ROOT / "examples" / "nvme-bridge-2nic.toml")
    comps = json.loads(r.stdout)["components"]
    serial = bytes(comps["nvme0"]["component"]["serial_number"])
    assert serial == b"CELLA-NVME-0001".ljust(20, b" ")
    assert comps["net0"]["component"]["backend_id"] == "net0-backend"
    assert comps["net0-backend"]["component"]["vnic_name"] == "tap0"
    assert comps["pci-bridge-0"]["component"]["downstream_bus"] == 1


def test_from_toml_stdin_and_compact():
    text = (ROOT / "examples" / "small.toml").read_text()
    r = cella("spec", "from-toml", "--compact", "-", stdin=text)
    assert r.returncode == OK, r.stderr
    assert r.stdout.count("\n") == 1
    pretty = cella("spec", "from-toml", ROOT / "examples" / "small.toml")
    assert json.loads(r.stdout) == json.loads(pretty.stdout)


def test_from_toml_relative_path_made_absolute(tmp_path):
    cfg = tmp_path / "vm.toml"
    cfg.write_text(
        "[main]\nmemory = 64\n"
        '[block_dev.r]\ntype = "file"\npath = "disk.raw"\n'
        '[dev.d]\ndriver = "pci-virtio-block"\nblock_dev = "r"\npci-path = "0.4.0"\n'
    )
    r = cella("spec", "from-toml", cfg)
    assert r.returncode == OK, r.stderr
    path = json.loads(r.stdout)["components"]["r"]["component"]["path"]
    assert path == str(tmp_path.resolve() / "disk.raw")


def test_from_toml_reports_every_problem_with_lines(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        "[main]\n"
        "memory = 64\n"
        "[dev.disk0]\n"
        'driver = "pci-virtio-block"\n'
        'block_dev = "nope"\n'
        'pci_path = "0.4.0"\n'
    )
    r = cella("spec", "from-toml", cfg)
    assert r.returncode == INVALID
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert f'{cfg}: /dev/disk0/pci-path: line 3, column 6: [dev.disk0] is missing required key "pci-path"' in lines
    assert any(
        l.startswith(f"{cfg}: /dev/disk0/block_dev: line 5, column 13:") and "no [block_dev.nope]" in l
        for l in lines
    ), r.stderr
    assert any(
        "/dev/disk0/pci_path: line 6, column 1:" in l and 'did you mean "pci-path"' in l for l in lines
    ), r.stderr


def test_from_toml_syntax_error(tmp_path):
    cfg = tmp_path / "syntax.toml"
    cfg.write_text("[main]\nmemory = = 1\n")
    r = cella("spec", "from-toml", cfg)
    assert r.returncode == INVALID
    assert "line 2" in r.stderr


def test_from_toml_missing_file(tmp_path):
    r = cella("spec", "from-toml", tmp_path / "absent.toml")
    assert r.returncode == INVALID
    assert "cannot read" in r.stderr


def test_check_bad_spec_prints_pointer(small_spec, tmp_path):
    _, spec = small_spec
    bad = copy.deepcopy(spec)
    bad["components"]["disk0"]["component"]["pci_path"]["device"] = 40
    r = cella("spec", "check", write_json(tmp_path / "bad.json", bad))
    assert r.returncode == INVALID
    assert any(l.startswith("/components/disk0/component/pci_path: ") for l in r.stdout.splitlines()), r.stdout


def test_check_reports_all_problems(small_spec, tmp_path):
    _, spec = small_spec
    bad = copy.deepcopy(spec)
    bad["board"]["cpus"] = 0
    bad["components"]["disk0"]["component"]["backend_id"] = "missing"
    r = cella("spec", "check", write_json(tmp_path / "bad.json", bad))
    assert r.returncode == INVALID
    out = r.stdout.splitlines()
    assert any(l.startswith("/board/cpus: ") for l in out), r.stdout
    assert any(l.startswith("/components/disk0/component/backend_id: ") for l in out), r.stdout


def test_check_decode_error(small_spec, tmp_path):
    _, spec = small_spec
    bad = copy.deepcopy(spec)
    bad["board"]["colour"] = "blue"
    r = cella("spec", "check", write_json(tmp_path / "bad.json", bad))
    assert r.returncode == INVALID
    assert "/board/colour" in r.stdout


def test_check_malformed_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    r = cella("spec", "check", p)
    assert r.returncode == INVALID
    assert "malformed JSON" in r.stdout


def test_check_unsupported_kind(small_spec, tmp_path):
    _, spec = small_spec
    bad = copy.deepcopy(spec)
    bad["components"]["root"] = {
        "type": "crucible_storage_backend",
        "component": {"readonly": False, "request_json": "{}"},
    }
    r = cella("spec", "check", write_json(tmp_path / "bad.json", bad))
    assert r.returncode == INVALID
    assert "/components/root/type: " in r.stdout
    assert "Crucible" in r.stdout


def test_check_stdin(small_spec):
    path, _ = small_spec
    r = cella("spec", "check", "-", stdin=path.read_text())
    assert (r.returncode, r.stdout) == (OK, "ok\n")


# ---- diff ----


def test_diff_self_is_empty(small_spec):
    path, _ = small_spec
    r = cella("spec", "diff", path, path)
    assert (r.returncode, r.stdout, r.stderr) == (OK, "", "")


def test_diff_names_changed_pci_path(small_spec, tmp_path):
    path, spec = small_spec
    moved = copy.deepcopy(spec)
    moved["components"]["disk0"]["component"]["pci_path"]["device"] = 9
    other = write_json(tmp_path / "moved.json", moved)
    r = cella("spec", "diff", path, other)
    assert r.returncode == DIFFERENT
    line = [l for l in r.stdout.splitlines() if l.startswith("/components/disk0/component/pci_path: ")]
    assert len(line) == 1, r.stdout
    assert "0.4.0" in line[0] and "0.9.0" in line[0]


def test_diff_ignores_backend_identity(small_spec, tmp_path):
    path, spec = small_spec
    moved = copy.deepcopy(spec)
    moved["components"]["root"]["component"]["path"] = "/elsewhere/disk.raw"
    r = cella("spec", "diff", path, write_json(tmp_path / "other.json", moved))
    assert (r.returncode, r.stdout) == (OK, "")


def test_diff_stdin(small_spec):
    path, _ = small_spec
    r = cella("spec", "diff", "-", path, stdin=path.read_text())
    assert (r.returncode, r.stdout) == (OK, "")


def test_diff_invalid_input(small_spec, tmp_path):
    path, _ = small_spec
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    r = cella("spec", "diff", path, bad)
    assert r.returncode == INVALID
    assert str(bad) in r.stderr


# ---- usage and help ----


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["-h"],
        ["spec", "--help"],
        ["spec", "from-toml", "--help"],
        ["spec", "check", "--help"],
        ["spec", "diff", "--help"],
        ["spec", "diff", "a", "--help"],
    ],
)
def test_help_exits_0(args):
    r = cella(*args)
    assert r.returncode == OK
    assert r.stdout.startswith("Usage: cella")
    assert r.stderr == ""


def test_help_lists_commands():
    assert "spec" in cella("--help").stdout
    out = cella("spec", "--help").stdout
    for name in ("from-toml", "check", "diff"):
        assert name in out
    assert "Exit status: 0 no guest-visible difference, 3 differences found" in cella("spec", "diff", "--help").stdout


def test_version():
    r = cella("--version")
    assert r.returncode == OK
    assert r.stdout.startswith("cella ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--bogus"],
        ["frobnicate"],
        ["spec"],
        ["spec", "frobnicate"],
        ["spec", "from-toml"],
        ["spec", "from-toml", "a.toml", "b.toml"],
        ["spec", "from-toml", "--bogus", "a.toml"],
        ["spec", "from-toml", "--compact=yes", "a.toml"],
        ["spec", "check"],
        ["spec", "diff", "a.json"],
        ["spec", "diff", "-", "-"],
    ],
)
def test_usage_errors_exit_2(args):
    r = cella(*args)
    assert r.returncode == USAGE, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith("cella: ")


def test_double_dash_ends_options(tmp_path):
    # A file whose name starts with "-" can be named after "--".
    (tmp_path / "--odd.toml").write_text("[main]\nmemory = 64\n")
    r = cella("spec", "from-toml", "--", "--odd.toml", cwd=tmp_path)
    assert r.returncode == OK, r.stderr
