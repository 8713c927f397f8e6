# SPDX-License-Identifier: MPL-2.0
"""cella's API bodies against Propolis's own OpenAPI document (server API v5).

The emitter (tests/conformance/emit_bodies.c, built as `emit-bodies`) prints
cella's SPEC_ENC_API encoding of every body a Propolis client exchanges with a
server about specs: ensure requests (both init methods), spec-get responses
(Present and WaitingForMigrationSource), every component kind and every
replacement kind Propolis defines, instance properties and the ensure
response. Each must validate against the schema it is tagged with.

Run:  /usr/bin/python3 -m pytest tests/conformance/test_propolis_schemas.py
Environment:
  CELLA_BUILD_DIR  meson build dir holding tests/conformance/emit-bodies
                   (default: <repo>/build)
  CELLA_SHARED     the shared dir holding reference/ (default: <repo>/../shared)
"""
import copy
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CELLA_SHARED", REPO.parent / "shared"))
OPENAPI = SHARED / "reference" / "propolis-server-openapi-v5.json"
BUILD = Path(os.environ.get("CELLA_BUILD_DIR", REPO / "build"))
EMITTER = BUILD / "tests" / "conformance" / "emit-bodies"

# Propolis's SpecKey is an untagged serde enum (Uuid | String): serde takes
# the first variant that parses. As a JSON-schema oneOf every UUID string
# matches both branches (and without format checks every string does), so
# a strict validator would reject every key. anyOf says what serde does.
UNTAGGED_ENUMS = {"SpecKey"}

UINT_MAX = {"uint8": 2**8 - 1, "uint16": 2**16 - 1, "uint32": 2**32 - 1,
            "uint64": 2**64 - 1, "uint": 2**64 - 1}
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


# ---- OpenAPI 3.0 -> JSON schema ----

def _nullable(node):
    """OpenAPI 3.0 `nullable: true` means null is also allowed."""
    node = dict(node)
    del node["nullable"]
    if isinstance(node.get("type"), str) and not any(
            k in node for k in ("allOf", "anyOf", "oneOf", "$ref")):
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = node["enum"] + [None]
        return node
    return {"anyOf": [{"type": "null"}, node]}


def convert(node):
    """Recursively rewrites OpenAPI-only constructs into JSON schema."""
    if isinstance(node, list):
        return [convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: convert(v) for k, v in node.items()}
    if node.get("nullable") is True:
        return _nullable(node)
    node.pop("nullable", None)
    return node


def load_schemas():
    doc = json.loads(OPENAPI.read_text())
    schemas = convert(doc["components"]["schemas"])
    for name in UNTAGGED_ENUMS:
        schemas[name]["anyOf"] = schemas[name].pop("oneOf")
    return schemas


def format_checker():
    """Checks the formats Propolis uses: uuid and the unsigned widths."""
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("uuid")
    def is_uuid(value):
        return not isinstance(value, str) or bool(UUID_RE.match(value))

    for fmt, top in UINT_MAX.items():
        def in_range(value, top=top):
            return not isinstance(value, int) or isinstance(value, bool) or 0 <= value <= top
        checker.checks(fmt)(in_range)
    return checker


SCHEMAS = load_schemas()
CHECKER = format_checker()


def validator(name):
    """A validator for one named schema; refs resolve inside the document."""
    root = {"components": {"schemas": SCHEMAS},
            "allOf": [{"$ref": "#/components/schemas/" + name}]}
    jsonschema.Draft7Validator.check_schema(root)
    return jsonschema.Draft7Validator(root, format_checker=CHECKER)


def errors(name, body):
    return list(validator(name).iter_errors(body))


# ---- the emitter ----

def run_emitter():
    if not EMITTER.exists():
        raise RuntimeError(f"{EMITTER} is missing: build first (ninja -C {BUILD}) "
                           "or set CELLA_BUILD_DIR")
    out = subprocess.run([str(EMITTER)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"emit-bodies failed ({out.returncode}):\n{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line]


DOCS = run_emitter()
PROPOLIS_DOCS = [d for d in DOCS if not d.get("cella_only")]


def doc(case):
    return copy.deepcopy(next(d["body"] for d in DOCS if d["case"] == case))


# ---- every emitted body against its schema ----

@pytest.mark.parametrize("d", DOCS, ids=[d["case"] for d in DOCS])
def test_body_matches_propolis_schema(d):
    if d.get("cella_only"):
        # cella's own additions (nbd_storage_backend, the FileStorageBackend,
        # BlobStorageBackend and NbdStorageBackend replacement tags) are not
        # part of Propolis's API, so its schema cannot judge them.
        pytest.skip("cella-only addition; not in Propolis's schema")
    assert d["schema"] in SCHEMAS
    problems = errors(d["schema"], d["body"])
    assert not problems, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in problems)


# ---- the emitter covers what the schema defines ----

def _tags(schema, prop):
    return {v["properties"][prop]["enum"][0] for v in SCHEMAS[schema]["oneOf"]}


def _emitted(schema, prop):
    return {d["body"][prop] for d in PROPOLIS_DOCS if d["schema"] == schema}


def test_every_propolis_component_kind_emitted():
    assert _tags("Component", "type") == _emitted("Component", "type")
    in_specs = {c["type"] for d in PROPOLIS_DOCS if d["schema"] == "InstanceSpec"
                for c in d["body"]["components"].values()}
    assert _tags("Component", "type") <= in_specs


def test_every_propolis_replacement_kind_emitted():
    tags = _tags("ReplacementComponent", "component")
    assert tags == _emitted("ReplacementComponent", "component")
    body = doc("ensure/migration-target")
    used = {r["component"] for r in body["init"]["value"]["replace_components"].values()}
    assert used == tags


def test_both_init_methods_and_statuses_emitted():
    methods = {d["body"]["init"]["method"] for d in PROPOLIS_DOCS
               if d["schema"] == "InstanceEnsureRequest"}
    assert methods == {"Spec", "MigrationTarget"}
    statuses = {d["body"]["spec"]["type"] for d in PROPOLIS_DOCS
                if d["schema"] == "InstanceSpecGetResponse"}
    assert statuses == _tags("InstanceSpecStatus", "type")
    states = {d["body"]["state"] for d in PROPOLIS_DOCS
              if d["schema"] == "InstanceSpecGetResponse"}
    assert states == set(SCHEMAS["InstanceState"]["enum"])
    migrate = [d["body"]["migrate"] for d in PROPOLIS_DOCS
               if d["schema"] == "InstanceEnsureResponse"]
    assert None in migrate and any(m is not None for m in migrate)


def test_cella_only_cases_are_really_cella_only():
    """What the emitter marks cella-only is indeed absent from the schema."""
    kinds = _tags("Component", "type")
    tags = _tags("ReplacementComponent", "component")
    for d in DOCS:
        if not d.get("cella_only"):
            continue
        if d["schema"] == "Component":
            assert d["body"]["type"] not in kinds
        elif d["schema"] == "ReplacementComponent":
            assert d["body"]["component"] not in tags


def test_api_encoding_hides_cella_defaults():
    """cella's extension fields at their default are left out (Propolis's shape)."""
    nvme = doc("component/nvme_disk")["component"]
    assert "string_pad" not in nvme
    assert "mac" not in doc("component/virtio_nic")["component"]
    assert "guest_hv_interface" not in doc("spec/minimal")["board"]


# ---- the validator is live: broken bodies fail ----

def _must_fail(schema, body):
    assert errors(schema, body), f"{schema} accepted a broken body: {json.dumps(body)}"


def test_unknown_field_in_component_fails():
    body = doc("component/virtio_disk")
    body["component"]["bogus"] = 1
    _must_fail("Component", body)


def test_unknown_field_in_board_fails():
    body = doc("ensure/spec")
    body["init"]["value"]["spec"]["board"]["bogus"] = True
    _must_fail("InstanceEnsureRequest", body)


def test_cella_extension_fields_fail_propolis_schema():
    """Why SPEC_ENC_API omits them: Propolis's component schemas are closed."""
    nic = doc("component/virtio_nic")
    nic["component"]["mac"] = "02:00:00:00:00:01"
    _must_fail("Component", nic)
    nvme = doc("component/nvme_disk")
    nvme["component"]["string_pad"] = 0
    _must_fail("Component", nvme)
    assert not errors("Component", doc("component/nvme_disk"))


def test_missing_required_and_wrong_types_fail():
    body = doc("ensure/spec")
    del body["init"]["value"]["spec"]["board"]["cpus"]
    _must_fail("InstanceEnsureRequest", body)
    body = doc("ensure/spec")
    body["init"]["method"] = "Create"
    _must_fail("InstanceEnsureRequest", body)
    body = doc("ensure/migration-target")
    del body["init"]["value"]["replace_components"]
    _must_fail("InstanceEnsureRequest", body)
    body = doc("spec-get/present")
    body["state"] = "Paused"
    _must_fail("InstanceSpecGetResponse", body)
    body = doc("component/serial_port")
    body["component"]["num"] = "com5"
    _must_fail("Component", body)


def test_formats_are_checked():
    body = doc("component/virtio_disk")
    body["component"]["pci_path"]["device"] = 300
    _must_fail("Component", body)
    body = doc("ensure-response/migration")
    body["migrate"]["migration_id"] = "not-a-uuid"
    _must_fail("InstanceEnsureResponse", body)
    body = doc("component/nvme_disk")
    body["component"]["serial_number"] = body["component"]["serial_number"][:19]
    _must_fail("Component", body)


def test_nullable_is_handled():
    assert not errors("InstanceEnsureResponse", {"migrate": None})
    _must_fail("InstanceEnsureResponse", {"migrate": 5})
    body = doc("component/file_storage_backend")
    body["component"]["workers"] = None
    assert not errors("Component", body)
    body["component"]["workers"] = 0
    _must_fail("Component", body)
    spec = doc("spec/minimal")
    spec["smbios"] = None
    spec["board"]["cpuid"] = None
    assert not errors("InstanceSpec", spec)
    spec["smbios"] = "none"
    _must_fail("InstanceSpec", spec)


def test_spec_keys_may_be_uuids_or_names():
    """SpecKey (backend_id, boot entries) is a UUID or a name."""
    body = doc("spec/all-propolis-kinds")
    ids = [c["component"]["backend_id"] for c in body["components"].values()
           if "backend_id" in c["component"]]
    assert any(UUID_RE.match(k) for k in ids) and any(not UUID_RE.match(k) for k in ids)
    assert not errors("InstanceSpec", body)
    assert not errors("SpecKey", "6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e6f")
    assert not errors("SpecKey", "disk0")
    _must_fail("SpecKey", 7)
