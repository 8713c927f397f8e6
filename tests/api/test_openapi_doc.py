# SPDX-License-Identifier: MPL-2.0
"""docs/openapi.json: generated from Propolis's reference document
(gen_openapi.py), shared shapes unchanged, cella's additions marked, and its
paths are exactly what the server routes."""
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from conftest import CELLA_DOC, PROPOLIS_DOC, REFERENCE

HERE = Path(__file__).resolve().parent
EXTENDED = {"Component", "NvmeDisk", "VirtioNic", "ReplacementComponent"}
CELLA_SCHEMAS = {"NbdStorageBackend"}

needs_reference = pytest.mark.skipif(PROPOLIS_DOC is None,
                                     reason=f"{REFERENCE} not found (set CELLA_SHARED)")


@needs_reference
def test_doc_is_up_to_date():
    r = subprocess.run([sys.executable, str(HERE / "gen_openapi.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_doc_is_openapi_3_with_valid_schemas():
    doc = CELLA_DOC.doc
    assert doc["openapi"].startswith("3.0.")
    assert "Mozilla Public License 2.0" in doc["info"]["description"]
    assert "Propolis" in doc["info"]["description"]
    for name in CELLA_DOC.schemas:
        jsonschema.Draft7Validator.check_schema(CELLA_DOC.schemas[name])
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    assert refs
    for target in refs:
        assert target.startswith("#/components/"), target
        kind, name = target.split("/")[2:4]
        assert name in doc["components"][kind], target


@needs_reference
def test_shared_schemas_are_propolis_schemas():
    ref = PROPOLIS_DOC.doc["components"]["schemas"]
    ours = CELLA_DOC.doc["components"]["schemas"]
    for name, schema in ours.items():
        if name in CELLA_SCHEMAS:
            assert schema.get("x-cella") is True
            assert name not in ref
            continue
        assert name in ref, name
        if name not in EXTENDED:
            assert schema == ref[name], name
            continue
        # Extended: everything Propolis has is there unchanged; additions marked.
        if "oneOf" in schema:
            assert schema["oneOf"][:len(ref[name]["oneOf"])] == ref[name]["oneOf"]
            assert all(v.get("x-cella") for v in schema["oneOf"][len(ref[name]["oneOf"]):])
        else:
            for k, v in ref[name]["properties"].items():
                assert schema["properties"][k] == v
            added = set(schema["properties"]) - set(ref[name]["properties"])
            assert added and all(schema["properties"][k].get("x-cella") for k in added)
            assert schema["required"] == ref[name]["required"]


@needs_reference
def test_paths_are_propolis_paths_minus_crucible():
    ref = PROPOLIS_DOC.doc["paths"]
    ours = {p: ops for p, ops in CELLA_DOC.doc["paths"].items()
            if not all(op.get("x-cella") for op in ops.values())}
    assert set(ours) == {p for p in ref if not p.startswith("/instance/disk/")}
    extensions = set(CELLA_DOC.doc["paths"]) - set(ours)
    assert extensions == {"/instance/migration-report", "/instance/migration-settings"}, \
        extensions
    for path, ops in ours.items():
        assert set(ops) == set(ref[path])
        for method, op in ops.items():
            for key in ("operationId", "parameters", "requestBody", "responses"):
                assert op.get(key) == ref[path][method].get(key), (path, method, key)


def test_every_documented_operation_is_routed(server, api):
    api.ensure()
    for path, ops in CELLA_DOC.doc["paths"].items():
        concrete = path.replace("{migration_id}", "0d6b8a4e-5f44-4b8a-9f4f-2c3b1e0f7a10")
        for method in ops:
            r = api.call(method.upper(), concrete, check=False, data=b"{}")
            documented = set(ops[method]["x-cella-status-codes"])
            if "404" not in documented:
                assert r.status_code not in (404, 405), (method, path, r.status_code)
            assert str(r.status_code) in documented, (method, path, r.status_code)
