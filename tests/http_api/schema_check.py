"""Check a real response against the server's own ``/openapi.json``, as a generated client would.

A small JSON Schema checker for what pydantic and FastAPI emit (``$ref``, ``anyOf``,
``allOf``, ``type``, ``properties``, ``required``, ``additionalProperties``, ``items``,
``enum``, ``const``, ``format: date-time``) — enough to catch a field the schema does not
promise, a missing one, a wrong type, or a status the operation does not document.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import httpx

__all__ = ["Schema"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class Schema:
    """The OpenAPI document of a running server."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._templates = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
            for path in document["paths"]
        ]

    def template(self, path: str) -> str:
        """The documented path template that ``path`` matches."""
        exact = [t for pattern, t in self._templates if pattern.match(path) and "{" not in t]
        matches = exact or [t for pattern, t in self._templates if pattern.match(path)]
        assert matches, f"{path} is not in the schema"
        return matches[0]

    def check(self, response: httpx.Response) -> None:
        """Fail unless the response's status and body are what the schema documents."""
        request = response.request
        path = self.template(request.url.path)
        operation = self.document["paths"][path].get(request.method.lower())
        assert operation is not None, f"{request.method} {path} is not documented"
        status = str(response.status_code)
        documented = operation["responses"].get(status) or operation["responses"].get("default")
        assert documented is not None, (
            f"{request.method} {path} answered {status}, which its schema does not list "
            f"({sorted(operation['responses'])}): {response.text[:300]}"
        )
        content = documented.get("content") or {}
        if not content:
            assert not response.content, f"{request.method} {path} {status}: body not documented"
            return
        media = response.headers.get("content-type", "").split(";")[0].strip()
        assert media in content, f"{request.method} {path} {status}: {media} not in {list(content)}"
        schema = content[media].get("schema")
        if schema is not None and media == "application/json":
            errors = self.errors(response.json(), schema, "body")
            assert not errors, f"{request.method} {path} {status}: " + "; ".join(errors[:5])

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].removeprefix("#/components/schemas/")
            schema = self.document["components"]["schemas"][name]
        return schema

    def errors(self, value: Any, schema: dict[str, Any], where: str) -> list[str]:
        """Every way ``value`` breaks ``schema`` (empty: it conforms)."""
        schema = self.resolve(schema)
        if "anyOf" in schema or "oneOf" in schema:
            options = schema.get("anyOf") or schema["oneOf"]
            if any(not self.errors(value, option, where) for option in options):
                return []
            return [f"{where}: {value!r} matches no option"]
        problems = [e for part in schema.get("allOf", []) for e in self.errors(value, part, where)]
        if "const" in schema and value != schema["const"]:
            problems.append(f"{where}: {value!r} is not {schema['const']!r}")
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{where}: {value!r} not in {schema['enum']}")
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            if not any(_is(value, k) for k in kinds):
                return [*problems, f"{where}: {value!r} is not {kind}"]
        if isinstance(value, str) and schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                problems.append(f"{where}: {value!r} is not a date-time")
        if isinstance(value, dict):
            problems += self._object_errors(value, schema, where)
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                problems += self.errors(item, schema["items"], f"{where}[{i}]")
        return problems

    def _object_errors(
        self, value: dict[str, Any], schema: dict[str, Any], where: str
    ) -> list[str]:
        problems = [
            f"{where}: missing {name!r}" for name in schema.get("required", []) if name not in value
        ]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problems += self.errors(item, properties[name], f"{where}.{name}")
            elif extra is False or (extra is True and properties):
                # pydantic models list every field: anything else is a surprise.
                problems.append(f"{where}: undocumented field {name!r}")
            elif isinstance(extra, dict):
                problems += self.errors(item, extra, f"{where}.{name}")
        return problems


def _is(value: Any, kind: str) -> bool:
    if kind in {"integer", "number"} and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[kind])
