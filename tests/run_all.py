#!/usr/bin/python3
"""Builds cella every way CI needs and runs every test suite.

Each suite reports its own counts; this script adds them up and prints
one closing line, "N passed, N failed", that CI reads. A build that fails
counts as a failed check and skips the suites that need it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("CELLA_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "20"))

BUILDS = {
    # name: (environment, meson options)
    "build": ({"CC": "gcc"}, []),
    "build-clang": ({"CC": "clang"}, []),
    "build-asan": ({"CC": "gcc"}, ["-Db_sanitize=address,undefined", "-Db_lundef=false",
                                    "-Dc_args=-fno-sanitize-recover=all"]),
    "build-fuzz": ({"CC": "clang"}, ["-Dfuzz=true", "-Dtests=false",
                                     "-Db_sanitize=address,undefined", "-Db_lundef=false",
                                     "-Dc_args=-fsanitize=fuzzer-no-link"]),
}

totals = {"passed": 0, "failed": 0}
failures = []


def record(name, passed, failed):
    totals["passed"] += passed
    totals["failed"] += failed
    if failed:
        failures.append(name)
    print(f"== {name}: {passed} passed, {failed} failed", flush=True)


def run(cmd, env=None, cwd=ROOT, timeout=1800):
    e = dict(os.environ)
    e.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    e.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    e.update(env or {})
    p = subprocess.run(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace",
                       timeout=timeout)
    return p.returncode, p.stdout


def build(name):
    env, opts = BUILDS[name]
    d = os.path.join(ROOT, name)
    if not os.path.exists(os.path.join(d, "build.ninja")):
        rc, out = run(["meson", "setup", d] + opts, env=env)
        if rc != 0:
            print(out)
            record(f"configure {name}", 0, 1)
            return False
    rc, out = run(["ninja", "-C", d], env=env)
    if rc != 0:
        print(out[-20000:])
        record(f"build {name}", 0, 1)
        return False
    record(f"build {name}", 1, 0)
    return True


def unit_tests(bdir):
    rc, out = run(["meson", "introspect", "--tests", bdir])
    tests = [t for t in json.loads(out) if "unit" in t.get("suite", []) or
             any(s.endswith(":unit") for s in t.get("suite", []))]
    for t in tests:
        rc, out = run(t["cmd"], env={"CMOCKA_MESSAGE_OUTPUT": "stdout"}, timeout=600)
        passed = sum(int(n) for n in re.findall(r"^\[  PASSED  \] (\d+) test", out, re.M))
        failed = sum(int(n) for n in re.findall(r"^\[  FAILED  \] (\d+) test", out, re.M))
        if rc != 0 and failed == 0:
            failed = 1  # crashed, or a sanitizer report
        if failed:
            print(out[-20000:])
        record(f"{bdir}: {t['name']}", passed, failed)


def toml_suite():
    decoder = os.path.join(ROOT, "build", "tools", "toml-decoder", "toml-decoder")
    suite = os.path.join(SHARED, "reference", "toml-test")
    rc, out = run(["/usr/bin/python3", "tests/toml/run_toml_test.py", decoder, suite,
                   os.path.join(suite, "files-toml-1.0.0")])
    m = re.search(r"^toml-test: (\d+) passed, (\d+) failed", out, re.M)
    if not m:
        print(out[-20000:])
        record("toml-test 1.0.0", 0, 1)
        return
    passed, failed = int(m.group(1)), int(m.group(2))
    if failed or rc != 0:
        print(out[-20000:])
    record("toml-test 1.0.0", passed, failed if rc == 0 else max(failed, 1))


def pytest_suite(name, path):
    rc, out = run(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
                  env={"CELLA_BUILD_DIR": os.path.join(ROOT, "build"),
                       "CELLA_SHARED": SHARED})
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", out.splitlines()[-1] if out else ""))
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", out.splitlines()[-1] if out else ""))
    if rc not in (0,) and failed == 0:
        failed = 1  # collection errors, or no tests ran (exit 5)
    if failed:
        print(out[-20000:])
    record(name, passed, failed)


def script_suite(name, cmd):
    """A script that ends with its own "N passed, N failed" line."""
    rc, out = run(cmd)
    m = re.findall(r"^(?:\w+: )?(\d+) passed, (\d+) failed", out, re.M)
    if not m:
        print(out[-20000:])
        record(name, 0, 1)
        return
    passed, failed = int(m[-1][0]), int(m[-1][1])
    if rc != 0 and failed == 0:
        failed = 1
    if failed:
        print(out[-20000:])
    record(name, passed, failed)


def integration_suite(name, migration=False):
    """Real guests on real KVM, through the test host (tests/integration/run).

    The live-migration tests are a stage of their own (one test-host run
    each), so that a crash of the nested test host's kernel, which
    migration's dirty logging provokes more often, costs one stage a retry
    rather than taking the other tests down with it."""
    env = {"CELLA_BUILD_DIR": os.path.join(ROOT, "build"),
           "CELLA_INTEGRATION_MIGRATION": "1" if migration else "0"}
    rc, out = run(["bash", "tests/integration/run"], env=env, timeout=3000)
    summary = re.findall(r"^=*\s*(.*\d+ (?:passed|failed|error).*?)\s*=*$", out, re.M)
    line = summary[-1] if summary else ""
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", line))
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|errors?)", line))
    if "RE-RUNNING the failed tests" in out and len(summary) >= 2:
        # The first run's passes count too; only the re-run decides the failures.
        first = summary[-2]
        passed += sum(int(n) for n in re.findall(r"(\d+) passed", first))
        print("   integration: failed tests were re-run once: first run said: " + first)
    if rc != 0 and failed == 0:
        failed = 1
    print(out[-6000:] if failed else out[-1500:])
    record(name, passed, failed)


def fuzz_target(name, corpus):
    exe = os.path.join(ROOT, "build-fuzz", "tests", "fuzz", name)
    if not os.path.exists(exe):
        record(f"fuzz {name}", 0, 1)
        return
    work = tempfile.mkdtemp(prefix=f"cella-{name}-")
    try:
        for f in os.listdir(corpus):
            shutil.copy(os.path.join(corpus, f), work)
        rc, out = run([exe, f"-max_total_time={FUZZ_SECONDS}", "-max_len=16384",
                       "-rss_limit_mb=2048", "-timeout=10", f"-artifact_prefix={work}/",
                       work], timeout=FUZZ_SECONDS + 300)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = re.search(r"Done (\d+) runs in (\d+) second", out)
    runs = m.group(1) if m else "?"
    print(f"   {name}: {runs} executions in {FUZZ_SECONDS} s, exit {rc}")
    if rc != 0:
        print(out[-20000:])
    record(f"fuzz {name} ({runs} runs)", 1 if rc == 0 else 0, 0 if rc == 0 else 1)


def format_check():
    files = []
    for top in ("src", "tests", "tools"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.join(dirpath, n) for n in names if n.endswith((".c", ".h"))]
    rc, out = run(["clang-format", "--dry-run", "-Werror"] + sorted(files))
    if rc != 0:
        print(out[-5000:])
    record("clang-format", 1 if rc == 0 else 0, 0 if rc == 0 else 1)


def main():
    start = time.time()
    if not os.path.isdir(os.path.join(SHARED, "reference")):
        print(f"run_all: shared reference data not found at {SHARED} (set CELLA_SHARED)")
        record("shared reference data", 0, 1)
    built = {name: build(name) for name in BUILDS}
    for b in ("build", "build-clang", "build-asan"):
        if built[b]:
            unit_tests(b)
    if built["build"]:
        toml_suite()
        pytest_suite("conformance (Propolis schemas)", "tests/conformance")
        pytest_suite("cli", "tests/cli")
        pytest_suite("api (HTTP server, fake and real instance)", "tests/api")
    script_suite("ACPI tables vs ACPICA (iasl, acpiexec)", ["bash", "tests/acpi/check_tables.sh"])
    if built["build"] and os.environ.get("CELLA_SKIP_INTEGRATION") != "1":
        script_suite("test host smoke (nested KVM, QEMU oracle)",
                     ["bash", "tests/testhost/smoke.sh"])
        integration_suite("integration (real guests on KVM)")
        integration_suite("live migration (real guests on KVM)", migration=True)
    if built["build-fuzz"]:
        fuzz_target("fuzz_spec_json", os.path.join(ROOT, "tests/fuzz/corpus/spec"))
        fuzz_target("fuzz_toml", os.path.join(ROOT, "tests/fuzz/corpus/toml"))
        fuzz_target("fuzz_fw_cfg", os.path.join(ROOT, "tests/fuzz/corpus/fw_cfg"))
        fuzz_target("fuzz_pci", os.path.join(ROOT, "tests/fuzz/corpus/pci"))
        fuzz_target("fuzz_kernel_image", os.path.join(ROOT, "tests/fuzz/corpus/kernel_image"))
        fuzz_target("fuzz_virtqueue", os.path.join(ROOT, "tests/fuzz/corpus/virtqueue"))
        fuzz_target("fuzz_virtio_blk", os.path.join(ROOT, "tests/fuzz/corpus/virtio_blk"))
        fuzz_target("fuzz_nvme", os.path.join(ROOT, "tests/fuzz/corpus/nvme"))
        fuzz_target("fuzz_device_state", os.path.join(ROOT, "tests/fuzz/corpus/device_state"))
        fuzz_target("fuzz_migrate", os.path.join(ROOT, "tests/fuzz/corpus/migrate"))
    format_check()
    print(f"== took {time.time() - start:.0f} s")
    if failures:
        print("failed: " + "; ".join(failures))
    print(f"{totals['passed']} passed, {totals['failed']} failed")
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
