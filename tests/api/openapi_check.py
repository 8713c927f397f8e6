# SPDX-License-Identifier: MPL-2.0
"""Validates HTTP answers against an OpenAPI 3.0 document with jsonschema.

OpenAPI 3.0 is close to JSON schema draft 7 but not equal: `nullable`
means "or null", and Propolis's SpecKey is an untagged serde enum
(UUID | string) whose oneOf would reject every UUID (it matches both
branches), so it is read as anyOf, which is what serde does. schemars
writes Rust's unit type as {"type": "string", "enum": [null]}, read here as
null. The formats Propolis uses (uuid, uint8..uint64) are checked.
"""
import json
import re

import jsonschema

UINT_MAX = {"uint8": 2**8 - 1, "uint16": 2**16 - 1, "uint32": 2**32 - 1,
            "uint64": 2**64 - 1, "uint": 2**64 - 1}
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
UNTAGGED_ENUMS = {"SpecKey"}


def _convert(node):
    if isinstance(node, list):
        return [_convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _convert(v) for k, v in node.items()}
    if node.get("enum") == [None]:
        # schemars writes Rust's () as {"type": "string", "enum": [null]}
        # (POST /instance/nmi); the value on the wire is null.
        return {"type": "null"}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str) and not any(
                k in node for k in ("allOf", "anyOf", "oneOf", "$ref")):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = node["enum"] + [None]
            return node
        return {"anyOf": [{"type": "null"}, node]}
    return node


def _format_checker():
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("uuid")
    def is_uuid(value):
        return not isinstance(value, str) or bool(UUID_RE.match(value))

    for fmt, top in UINT_MAX.items():
        def in_range(value, top=top):
            return not isinstance(value, int) or isinstance(value, bool) or 0 <= value <= top
        checker.checks(fmt)(in_range)
    return checker


class OpenApi:
    """One OpenAPI document: look up operations, validate bodies."""

    def __init__(self, path):
        self.path = path
        self.doc = json.loads(open(path).read())
        self.schemas = _convert(self.doc["components"]["schemas"])
        for name in UNTAGGED_ENUMS:
            if name in self.schemas and "oneOf" in self.schemas[name]:
                self.schemas[name]["anyOf"] = self.schemas[name].pop("oneOf")
        self.checker = _format_checker()
        self.templates = []
        for tpl in self.doc["paths"]:
            rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(tpl)) + "$"
            self.templates.append((re.compile(rx), tpl))

    def template(self, path):
        for rx, tpl in self.templates:
            if rx.match(path):
                return tpl
        return None

    def operation(self, method, path):
        tpl = self.template(path)
        if tpl is None:
            return None
        return self.doc["paths"][tpl].get(method.lower())

    def _validator(self, schema):
        root = {"components": {"schemas": self.schemas}, "allOf": [_convert(schema)]}
        return jsonschema.Draft7Validator(root, format_checker=self.checker)

    def _resolve(self, node):
        while isinstance(node, dict) and "$ref" in node:
            parts = node["$ref"].lstrip("#/").split("/")
            node = self.doc
            for p in parts:
                node = node[p]
        return node

    def schema_errors(self, schema, body):
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in self._validator(schema).iter_errors(body)]

    def named_errors(self, name, body):
        return self.schema_errors({"$ref": "#/components/schemas/" + name}, body)

    def response_errors(self, method, path, status, body):
        """Problems of an answer (body: parsed JSON, or None when empty)."""
        op = self.operation(method, path)
        if op is None:
            # Unknown route or method: only the error shape can be judged.
            return self.named_errors("Error", body) if status >= 400 else [
                f"{method} {path}: not in {self.path}"]
        responses = op["responses"]
        spec = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
        if spec is None:
            return [f"{method} {path}: status {status} not documented in {self.path}"]
        spec = self._resolve(spec)
        content = spec.get("content")
        if not content:
            return [] if body is None else [f"{status} should have no body"]
        schema = content["application/json"]["schema"]
        return self.schema_errors(schema, body)

    def request_errors(self, method, path, body):
        op = self.operation(method, path)
        rb = op.get("requestBody") if op else None
        if not rb:
            return []
        return self.schema_errors(rb["content"]["application/json"]["schema"], body)
