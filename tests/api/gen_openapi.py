#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Builds docs/openapi.json: cella's API contract.

The paths and schemas cella shares with Oxide Propolis are copied unchanged
from Propolis's published OpenAPI document (server API 5.0.0, MPL-2.0; the
copy lives at ../shared/reference/propolis-server-openapi-v5.json). This
script then
  - drops what cella does not serve (the Crucible disk endpoints) and the
    schemas only they use,
  - adds cella's own fields and kinds, each marked "x-cella": true,
  - adds descriptions of cella's behaviour and the status codes each
    endpoint answers ("x-cella-status-codes"); shapes are never changed.

Usage: gen_openapi.py [--check]   (default: write docs/openapi.json)
       --check exits 1 when docs/openapi.json is not what it would write.
Environment: CELLA_SHARED (default <repo>/../shared).
"""
import copy
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CELLA_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "propolis-server-openapi-v5.json"
OUT = REPO / "docs" / "openapi.json"

DROPPED_PATHS = [
    "/instance/disk/{id}/snapshot/{snapshot_id}",
    "/instance/disk/{id}/status",
    "/instance/disk/{id}/vcr",
]

NO_INSTANCE = "424: no instance yet (error_code NoInstance)"
COMMON = {"405": "method not allowed (Allow header lists the methods)",
          "413": "request body over the limit", "415": "Content-Type is not application/json",
          "503": "the server is shutting down or out of memory"}

OPERATIONS = {
    ("/instance", "put"): (
        "Creates the VM from `init`. Spec: validated (every problem is reported in one 400, "
        "each line naming the JSON pointer of the field in the request body), then built; "
        "201 once the VM objects exist (state Creating). MigrationTarget: connects to the "
        "source, receives its spec, applies replace_components (backends and the failure "
        "injector only), proves the guest sees no difference, checks this host and builds "
        "the VM (backends probed, opened only when the guest is about to run); 201 then, "
        "state Migrating until the migration ends (docs/migration.md). Body limit 96 MiB "
        "(blob backends).",
        {"201": "created", "400": "malformed JSON, unknown field, invalid spec, a kind this "
         "host cannot provide, or (MigrationTarget) a replacement or source spec that cannot "
         "be used here", "409": "the server already has an instance (error_code "
         "AlreadyInitialized)", "500": "the VM could not be built, or the migration source "
         "could not be reached (error_code CreateFailed)"}),
    ("/instance", "get"): ("The instance's properties and state.", {"200": "ok", "424": NO_INSTANCE}),
    ("/instance/spec", "get"): (
        "The effective spec: defaults the server filled in (e.g. CPUID) included.",
        {"200": "ok", "424": NO_INSTANCE}),
    ("/instance/state", "put"): (
        "Requests Run, Stop or Reboot (the body is a bare JSON string).",
        {"204": "accepted", "400": "not one of \"Run\", \"Stop\", \"Reboot\"",
         "403": "not allowed in the current state", "424": NO_INSTANCE,
         "503": "the instance is still initializing"}),
    ("/instance/state-monitor", "get"): (
        "Answers when the instance's generation is at least `gen` (at once if it already "
        "is): a long poll. The generation starts at 1 and grows on every published change.",
        {"200": "ok", "400": "body is not {\"gen\": N}", "410": "the instance is destroyed "
         "and will never reach `gen`", "424": NO_INSTANCE,
         "503": "the server is shutting down"}),
    ("/instance/migration-status", "get"): (
        "The incoming and outgoing migrations of this instance, each null or {id, state} "
        "(Sync, RamPush, Pause, RamPushDirty, Device, Resume, RamPull, Server, Finish, Error).",
        {"200": "ok", "424": NO_INSTANCE}),
    ("/instance/nmi", "post"): (
        "Injects an NMI into the guest.",
        {"200": "done (body null)", "409": "the instance is not running", "424": NO_INSTANCE}),
    ("/instance/serial/history", "get"): (
        "Console output from the kept history (the first 1 MiB and the last 1 MiB). Exactly "
        "one of from_start and most_recent; max_bytes defaults to 16 KiB and is capped at "
        "1 MiB. Unknown or repeated query parameters are errors.",
        {"200": "ok", "400": "bad query, or bytes no longer kept", "424": NO_INSTANCE}),
    ("/instance/serial", "get"): (
        "Websocket (RFC 6455, version 13). Replays history from from_start or the most_recent "
        "bytes (at most one of them; neither: live output only), then live output, as binary "
        "messages. Binary messages from the client are keystrokes (at most 64 KiB each); text "
        "messages from the client are ignored; text messages from the server are JSON control "
        "messages (e.g. {\"Migrating\": {...}}). Closes with 1000 when the instance is "
        "destroyed or the console closes, 1001 when the server stops.",
        {"101": "switching protocols", "400": "not a websocket request, bad query, or bytes "
         "no longer kept", "424": NO_INSTANCE, "426": "Sec-WebSocket-Version is not 13",
         "503": "too many console clients (64)"}),
    ("/instance/migrate/{migration_id}/start", "get"): (
        "Websocket for a migration target: the source side of a live migration of this "
        "instance runs over it (docs/migration.md). Only a Running instance migrates.",
        {"101": "switching protocols", "400": "migration_id is not a UUID, or not a websocket "
         "request", "409": "the instance is not Running, or a migration runs",
         "424": NO_INSTANCE, "426": "Sec-WebSocket-Version is not 13"}),
}

# cella's own endpoints (not in Propolis's document).
CELLA_PATHS = {
    "/instance/migration-settings": {"put": {
        "operationId": "instance_migration_settings_put",
        "summary": "cella: settings for this instance's next outgoing live migrations",
        "description": "One or more of: downtime_ms, the budget for the paused part of a "
                       "migration (the source pauses once its predicted final pass fits it; "
                       "default 300); max_bandwidth_mibps, a cap on the live passes' rate in "
                       "MiB/s (0, the default: none; the paused pass is never held back); "
                       "auto_converge, whether the source may throttle the vCPUs of a guest "
                       "that dirties memory faster than the link carries it (default true); "
                       "delta_cache_mib, the memory the source may use to keep copies of pages "
                       "it sent so pages the guest writes again go as the bytes that changed "
                       "(protocol version 3; default a quarter of guest RAM, at most 1024; "
                       "0: pages always go whole). A field left out keeps its value.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "x-cella": True, "minProperties": 1,
            "additionalProperties": False,
            "properties": {"downtime_ms": {"type": "integer", "minimum": 1,
                                           "maximum": 600000},
                           "max_bandwidth_mibps": {"type": "integer", "minimum": 0,
                                                   "maximum": 1048576},
                           "auto_converge": {"type": "boolean"},
                           "delta_cache_mib": {"type": "integer", "minimum": 0,
                                               "maximum": 65536}}}}}},
        "responses": {"204": {"description": "set"},
                      "4XX": {"$ref": "#/components/responses/Error"},
                      "5XX": {"$ref": "#/components/responses/Error"}},
        "x-cella": True,
        "x-cella-status-codes": {"204": "set", "400": "no known field, an unknown one, or a "
                                 "value out of range",
                                 "424": NO_INSTANCE}}},
    "/instance/migration-report": {"get": {
        "operationId": "instance_migration_report",
        "summary": "cella: the last outgoing live migration's report",
        "description": "Outcome, blackout time (source paused until the target committed), "
                       "pre-copy passes and why they ended, and per phase the time, bytes, "
                       "pages (zero pages among them) and passes.",
        "responses": {"200": {"description": "the report", "content": {"application/json": {
            "schema": {"type": "object", "x-cella": True, "required": [
                "migration_id", "outcome", "blackout_ms", "total_ms", "passes", "phases"],
                "properties": {
                    "migration_id": {"type": "string"}, "outcome": {"type": "string"},
                    "blackout_ms": {"type": "number"}, "total_ms": {"type": "number"},
                    "passes": {"type": "integer"}, "converged": {"type": "boolean"},
                    "precopy_end": {"type": "string"}, "bandwidth_bps": {"type": "integer"},
                    "predicted_downtime_ms": {"type": "integer"},
                    "final_dirty_pages": {"type": "integer"}, "error": {"type": "string"},
                    "throttle_pct": {"type": "integer"},
                    "throttled_passes": {"type": "integer"},
                    "delta_pages": {"type": "integer"},
                    "delta_cache_bytes": {"type": "integer"},
                    "deferred_pages": {"type": "integer"},
                    "phases": {"type": "object", "additionalProperties": {
                        "type": "object", "properties": {
                            "ms": {"type": "number"}, "bytes": {"type": "integer"},
                            "pages": {"type": "integer"}, "zero_pages": {"type": "integer"},
                            "passes": {"type": "integer"}}}}}}}}},
            "4XX": {"$ref": "#/components/responses/Error"},
            "5XX": {"$ref": "#/components/responses/Error"}},
        "x-cella": True,
        "x-cella-status-codes": {"200": "ok", "404": "no outgoing migration has run",
                                 "424": NO_INSTANCE}}},
}

NBD = {
    "description": "cella: a storage backend served over NBD (nbd://host[:port]/export, "
                   "nbd+unix:///export?socket=PATH, and the TLS forms nbds:// and nbds+unix://).",
    "type": "object",
    "properties": {
        "readonly": {"description": "Indicates whether the storage is read-only.",
                     "type": "boolean"},
        "uri": {"description": "The NBD URI of the export.", "type": "string"},
    },
    "required": ["readonly", "uri"],
    "additionalProperties": False,
    "x-cella": True,
}

STRING_PAD = {
    "description": "cella (spec version 2): the byte that pads the NVMe Identify strings "
                   "(model number, firmware revision): 32 (space, NVMe 1.2+; the default) or "
                   "0 (NUL, what Propolis does).",
    "type": "integer",
    "format": "uint8",
    "enum": [0, 32],
    "default": 32,
    "x-cella": True,
}

MAC = {
    "nullable": True,
    "description": "cella: the guest-visible MAC address. When absent the server chooses one "
                   "and records it in the effective spec.",
    "type": "string",
    "pattern": "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$",
    "x-cella": True,
}


def variant(tag_prop, tag, body_prop, schema):
    return {
        "type": "object",
        "properties": {
            body_prop: {"$ref": "#/components/schemas/" + schema},
            tag_prop: {"type": "string", "enum": [tag]},
        },
        "required": sorted([body_prop, tag_prop]),
        "additionalProperties": False,
        "x-cella": True,
    }


def refs(node, out):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/components/schemas/"):
            out.add(r.rsplit("/", 1)[1])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def build(reference):
    doc = copy.deepcopy(reference)
    doc["info"]["title"] = "cella server API"
    doc["info"]["description"] = (
        "The HTTP API of cella, a VMM for Linux/KVM that speaks Oxide Propolis's server "
        "API (version 5.0.0) wire-for-wire for every feature the two share.\n\n"
        "Provenance: every path and schema not marked \"x-cella\" is copied unchanged from "
        "Propolis's published OpenAPI document for propolis-server (API version 5.0.0, "
        "https://github.com/oxidecomputer/propolis, openapi/propolis-server.json), which is "
        "licensed under the Mozilla Public License 2.0; cella implements that API and is "
        "itself MPL-2.0. cella omits the Crucible disk endpoints (cella has no Crucible) and "
        "adds: the nbd_storage_backend component, nvme_disk.string_pad, virtio_nic.mac, and "
        "the FileStorageBackend, BlobStorageBackend and NbdStorageBackend replacement "
        "components. Descriptions and x-cella-status-codes describe cella's behaviour; "
        "docs/api.md has the rest (limits, errors, threading).")
    doc["info"]["contact"] = {"name": "cella"}
    for p in DROPPED_PATHS:
        doc["paths"].pop(p)
    doc["paths"].update(CELLA_PATHS)
    for (path, method), (desc, codes) in OPERATIONS.items():
        op = doc["paths"][path][method]
        op["description"] = desc
        all_codes = dict(codes)
        for k, v in COMMON.items():
            all_codes.setdefault(k, v)
        op["x-cella-status-codes"] = dict(sorted(all_codes.items()))
    s = doc["components"]["schemas"]
    s["NbdStorageBackend"] = NBD
    s["Component"]["oneOf"].append(variant("type", "nbd_storage_backend", "component",
                                           "NbdStorageBackend"))
    s["NvmeDisk"]["properties"]["string_pad"] = STRING_PAD
    s["VirtioNic"]["properties"]["mac"] = MAC
    for tag in ("FileStorageBackend", "BlobStorageBackend", "NbdStorageBackend"):
        s["ReplacementComponent"]["oneOf"].append(variant("component", tag, "spec", tag))
    # Keep only the schemas the remaining paths reach.
    reach = set()
    refs(doc["paths"], reach)
    refs(doc["components"]["responses"], reach)
    todo = list(reach)
    while todo:
        found = set()
        refs(s[todo.pop()], found)
        for f in found - reach:
            reach.add(f)
            todo.append(f)
    doc["components"]["schemas"] = {k: v for k, v in s.items() if k in reach}
    return doc


def render(doc):
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main():
    text = render(build(json.loads(REFERENCE.read_text())))
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
