"""Resource bodies: validation against the schemas, projection (``attributes``/``excludedAttributes``), and
PATCH (RFC 7644 §3.5.2) with paths and value filters, in the dialects Okta and Microsoft Entra ID send.

A stored resource is a JSON object of canonical attribute names (extension attributes under their URN), with
no ``id``, ``meta``, ``schemas``, read-only or write-only attributes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scim2_filter_parser import ast

from portal.scim import errors, filters
from portal.scim.schema import COMMON, SCHEMAS, Attr, ResourceType

_TRUE = {"true": True, "false": False}
_ALL_SCHEMAS = {s.id.lower() for s in SCHEMAS}


# --- validation -------------------------------------------------------------------------------------------


def _value(attr: Attr, value: Any, where: str) -> Any:
    """One (single) value checked against ``attr``; string booleans (``"False"``, as Entra sends) are read."""
    if attr.type == "boolean":
        if isinstance(value, str) and value.strip().lower() in _TRUE:
            return _TRUE[value.strip().lower()]
        if not isinstance(value, bool):
            raise errors.invalid_value(f"{where} must be true or false.")
        return value
    if attr.type == "complex":
        if isinstance(value, str) and attr.child("value") is not None and not attr.multi:
            # Entra sets the enterprise manager with its id alone: "manager": "<id>".
            value = {"value": value}
        if not isinstance(value, dict):
            raise errors.invalid_value(f"{where} must be an object.")
        out: dict[str, Any] = {}
        for key, sub_value in value.items():
            sub = attr.child(key)
            if sub is None:
                raise errors.invalid_value(f"Unknown attribute {where}.{key}.")
            if sub_value is None or (sub.mutability == "readOnly" and attr.name != "members"):
                continue
            out[sub.name] = _value(sub, sub_value, f"{where}.{sub.name}")
        return out
    if attr.type in {"integer", "decimal"}:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise errors.invalid_value(f"{where} must be a number.")
        return value
    if not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise errors.invalid_value(f"{where} must be a string.")
        value = str(value)
    if len(value) > 10000:
        raise errors.invalid_value(f"{where} is longer than 10000 characters.")
    return value


def check_attr(attr: Attr, value: Any, where: str) -> Any:
    """A whole attribute's value (a list for multi-valued ones) checked against ``attr``."""
    if attr.multi:
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise errors.invalid_value(f"{where} must be a list.")
        if len(value) > 1000:
            raise errors.invalid_value(f"{where} has more than 1000 values.")
        items = [_value(attr, item, where) for item in value if item is not None]
        if attr.type == "complex" and sum(1 for i in items if i.get("primary") is True) > 1:
            raise errors.invalid_value(f"Only one of {where} may be primary.")
        return items
    return _value(attr, value, where)


def validate(rt: ResourceType, body: Any) -> dict[str, Any]:
    """The stored form of a POSTed or PUT body; ``ScimError`` naming the attribute otherwise."""
    if not isinstance(body, dict):
        raise errors.invalid_syntax("The body must be a JSON object.")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas):
        raise errors.invalid_value(f'schemas must be a list that includes "{rt.schema.id}".')
    known = {s.id.lower(): s for s in (rt.schema, *rt.extensions)}
    # Ours for another resource type is a mistake; a vendor's own URN without attributes (Entra lists
    # Microsoft's ADSCIM schema on Groups) carries nothing and is ignored.
    wrong = [s for s in schemas if s.lower() not in known and s.lower() in _ALL_SCHEMAS]
    if wrong:
        raise errors.invalid_value(f"Schema {wrong[0]!r} is not one of a {rt.name}.")
    if rt.schema.id.lower() not in {s.lower() for s in schemas}:
        raise errors.invalid_value(f'schemas must include "{rt.schema.id}".')
    out: dict[str, Any] = {}
    for key, value in body.items():
        lowered = key.lower()
        if lowered in {"schemas", "id", "meta"} or value is None:
            continue
        extension = known.get(lowered)
        if extension is not None and extension is not rt.schema:
            if not isinstance(value, dict):
                raise errors.invalid_value(f"{key} must be an object.")
            ext_out = {}
            for ext_key, ext_value in value.items():
                if ext_key.lower() == "schemas":
                    continue
                attr = extension.attr(ext_key)
                if attr is None:
                    raise errors.invalid_value(f"Unknown attribute {extension.id}:{ext_key}.")
                if ext_value is None or attr.mutability == "readOnly":
                    continue
                ext_out[attr.name] = check_attr(attr, ext_value, f"{extension.id}:{attr.name}")
            if ext_out:
                out[extension.id] = ext_out
            continue
        attr = rt.schema.attr(key) or next((a for a in COMMON if a.name.lower() == lowered), None)
        if attr is None:
            raise errors.invalid_value(f"Unknown attribute {key!r} for a {rt.name}.")
        if attr.mutability == "readOnly" or attr.returned == "never":
            continue  # RFC 7643 §2.2: read-only values are ignored; write-only ones are never stored here.
        out[attr.name] = check_attr(attr, value, attr.name)
    for attr in rt.schema.attrs:
        if attr.required and not (isinstance(out.get(attr.name), str) and out[attr.name].strip()):
            raise errors.invalid_value(f"{attr.name} is required.")
    return out


# --- projection -------------------------------------------------------------------------------------------


def _split(rt: ResourceType, path: str) -> tuple[str, ...]:
    """``name.givenName`` → ("name", "givenName"); ``urn:...:User:department`` → (urn, "department")."""
    for schema in (rt.schema, *rt.extensions):
        prefix = schema.id.lower() + ":"
        if path.lower().startswith(prefix):
            rest = path[len(prefix) :]
            parts = tuple(p for p in rest.split(".") if p)
            return parts if schema is rt.schema else (schema.id, *parts)
        if path.lower() == schema.id.lower() and schema is not rt.schema:
            return (schema.id,)
    return tuple(p for p in path.split(".") if p)


def _get_key(obj: dict[str, Any], name: str) -> str | None:
    lowered = name.lower()
    return next((k for k in obj if k.lower() == lowered), None)


def project(
    rt: ResourceType, resource: dict[str, Any], attributes: list[str], excluded: list[str]
) -> dict[str, Any]:
    """Keep ``attributes`` (and what is always returned) or drop ``excluded`` (RFC 7644 §3.9)."""
    always = {"id", "schemas"}
    if attributes:
        out: dict[str, Any] = {k: v for k, v in resource.items() if k in always}
        for path in attributes:
            parts = _split(rt, path)
            if not parts:
                continue
            _copy_path(resource, out, parts)
        return out
    out = copy.deepcopy(resource)
    for path in excluded:
        parts = _split(rt, path)
        if parts and parts[0] not in always:
            _drop_path(out, parts)
    return out


def _copy_path(source: dict[str, Any], target: dict[str, Any], parts: tuple[str, ...]) -> None:
    key = _get_key(source, parts[0])
    if key is None:
        return
    value = source[key]
    if len(parts) == 1:
        target[key] = copy.deepcopy(value)
    elif isinstance(value, dict):
        inner = target.setdefault(key, {})
        if isinstance(inner, dict):
            _copy_path(value, inner, parts[1:])
    elif isinstance(value, list):
        existing = target.get(key)
        items = existing if isinstance(existing, list) else [{} for _ in value]
        for src, dst in zip(value, items, strict=False):
            if isinstance(src, dict) and isinstance(dst, dict):
                _copy_path(src, dst, parts[1:])
        target[key] = items


def _drop_path(obj: dict[str, Any], parts: tuple[str, ...]) -> None:
    key = _get_key(obj, parts[0])
    if key is None:
        return
    if len(parts) == 1:
        del obj[key]
        return
    value = obj[key]
    if isinstance(value, dict):
        _drop_path(value, parts[1:])
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                _drop_path(item, parts[1:])


# --- value filters evaluated on one element (PATCH paths) ---------------------------------------------------


def matches(attr: Attr, element: Any, node: Any) -> bool:
    """Whether one element of multi-valued ``attr`` satisfies the value filter ``node``."""
    if isinstance(node, ast.Filter):
        if node.namespace is not None:
            raise errors.invalid_path("A value filter cannot contain another value filter.")
        result = matches(attr, element, node.expr)
        return not result if node.negated else result
    if isinstance(node, ast.LogExpr):
        if node.op.lower() == "and":
            return matches(attr, element, node.expr1) and matches(attr, element, node.expr2)
        return matches(attr, element, node.expr1) or matches(attr, element, node.expr2)
    if not isinstance(node, ast.AttrExpr) or isinstance(node.attr_path.attr_name, ast.Filter):
        raise errors.invalid_path("Invalid value filter.")
    sub = attr.child(node.attr_path.attr_name) if attr.sub else None
    if sub is None:
        raise errors.invalid_path(f"{attr.name} has no sub-attribute {node.attr_path.attr_name!r}.")
    actual = None
    if isinstance(element, dict):
        key = _get_key(element, sub.name)
        actual = element.get(key) if key else None
    op = str(node.value).lower()
    expected = node.comp_value.value if node.comp_value is not None else None
    if op == "pr":
        return bool(actual not in (None, "", [], {}))
    if expected is None:
        return bool((actual is None) == (op == "eq"))
    if sub.type == "boolean":
        if isinstance(expected, str) and expected.lower() in _TRUE:
            expected = _TRUE[expected.lower()]
        if isinstance(actual, str) and actual.lower() in _TRUE:
            actual = _TRUE[actual.lower()]
        same = bool(actual is expected)
        return same if op == "eq" else (not same if op == "ne" else False)
    if actual is None:
        return op == "ne"
    left, right = str(actual), str(expected)
    if not sub.case_exact:
        left, right = left.lower(), right.lower()
    checks: dict[str, Callable[[], bool]] = {
        "eq": lambda: left == right,
        "ne": lambda: left != right,
        "co": lambda: right in left,
        "sw": lambda: left.startswith(right),
        "ew": lambda: left.endswith(right),
        "gt": lambda: left > right,
        "ge": lambda: left >= right,
        "lt": lambda: left < right,
        "le": lambda: left <= right,
    }
    if op not in checks:
        raise errors.invalid_path(f"The operator {op!r} is not supported.")
    return checks[op]()


# --- PATCH ------------------------------------------------------------------------------------------------

_PATH = re.compile(r"^(?P<attr>[^\[\]]+?)(?:\[(?P<filter>.*)\](?:\.(?P<sub>[A-Za-z$][\w$-]*))?)?$")


@dataclass(frozen=True, slots=True)
class Path:
    """A PATCH path resolved: ``extension`` URN or None, the attribute, an optional value filter and sub-attribute."""

    extension: str | None
    attr: Attr
    filter: ast.Filter | None
    sub: Attr | None

    @property
    def name(self) -> str:
        return self.attr.name


def parse_path(rt: ResourceType, text: str) -> Path:
    """``members[value eq "x"]``, ``emails[type eq "work"].value``, ``name.givenName``, ``urn:...:department``."""
    if not isinstance(text, str) or not text.strip():
        raise errors.invalid_path("path must be a non-empty string.")
    match = _PATH.match(text.strip())
    if match is None:
        raise errors.invalid_path(f"Invalid path {text!r}.")
    tree = None
    if match.group("filter") is not None:
        try:
            tree = filters.parse(match.group("filter"))
        except errors.ScimError as exc:
            raise errors.invalid_path(f"Invalid value filter in path {text!r}: {exc.detail}") from exc
    parts = _split(rt, match.group("attr"))
    extension = parts[0] if parts and parts[0].startswith("urn:") else None
    names = parts[1:] if extension else parts
    if not names or len(names) > 2:
        raise errors.invalid_path(f"Invalid path {text!r}.")
    schema = rt.schema_for(extension) if extension else rt.schema
    attr = schema.attr(names[0]) if schema else None
    if attr is None and extension is None:
        attr = next((a for a in COMMON if a.name.lower() == names[0].lower()), None)
    if attr is None:
        raise errors.invalid_path(f"Unknown attribute in path {text!r}.")
    sub: Attr | None = None
    sub_name = names[1] if len(names) == 2 else match.group("sub")
    if len(names) == 2 and match.group("sub"):
        raise errors.invalid_path(f"Invalid path {text!r}.")
    if sub_name:
        sub = attr.child(sub_name)
        if sub is None:
            raise errors.invalid_path(f"{attr.name} has no sub-attribute {sub_name!r}.")
    if tree is not None and not attr.multi:
        raise errors.invalid_path(f"{attr.name} is not multi-valued: it takes no value filter.")
    if attr.mutability == "readOnly" or attr.name in {"id", "meta"}:
        raise errors.mutability(f"{attr.name} is read-only.")
    return Path(extension, attr, tree, sub)


def operations(body: Any) -> list[tuple[str, str | None, Any]]:
    """The (op, path, value) triples of a PatchOp body; ops read case-insensitively (Entra: ``"Replace"``)."""
    from portal.scim.schema import PATCH_OP

    if not isinstance(body, dict):
        raise errors.invalid_syntax("The body must be a JSON object.")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or PATCH_OP not in schemas:
        raise errors.invalid_value(f'schemas must be ["{PATCH_OP}"].')
    ops = body.get("Operations", body.get("operations"))
    if not isinstance(ops, list) or not ops:
        raise errors.invalid_value("Operations must be a non-empty list.")
    if len(ops) > 1000:
        raise errors.invalid_value("At most 1000 Operations per request.")
    out: list[tuple[str, str | None, Any]] = []
    for index, op in enumerate(ops):
        if not isinstance(op, dict):
            raise errors.invalid_value(f"Operations[{index}] must be an object.")
        name = str(op.get("op", "")).strip().lower()
        if name not in {"add", "remove", "replace"}:
            raise errors.invalid_value(f"Operations[{index}].op must be add, remove or replace.")
        path = op.get("path")
        if path is not None and not isinstance(path, str):
            raise errors.invalid_path(f"Operations[{index}].path must be a string.")
        if path is not None and not path.strip():
            path = None
        if name != "remove" and "value" not in op:
            raise errors.invalid_value(f"Operations[{index}] needs a value.")
        if name == "remove" and path is None:
            raise errors.no_target(f"Operations[{index}]: remove needs a path.")
        out.append((name, path, op.get("value")))
    return out


def _container(resource: dict[str, Any], path: Path, create: bool) -> dict[str, Any] | None:
    if path.extension is None:
        return resource
    ext = resource.get(path.extension)
    if ext is None and create:
        ext = resource[path.extension] = {}
    return ext if isinstance(ext, dict) else None


def apply(rt: ResourceType, resource: dict[str, Any], op: str, path_text: str | None, value: Any) -> None:
    """Apply one operation to ``resource`` in place (``members`` of a Group are handled by the caller)."""
    if path_text is None:
        if not isinstance(value, dict):
            raise errors.invalid_value(f"{op} without a path needs an object value.")
        for key, item in value.items():
            if key.lower() in {"schemas", "id", "meta"}:
                continue
            ext = rt.schema_for(key)
            if ext is not None and ext is not rt.schema and isinstance(item, dict):
                for ext_key, ext_value in item.items():
                    if ext_key.lower() != "schemas":
                        apply(rt, resource, op, f"{ext.id}:{ext_key}", ext_value)
                continue
            apply(rt, resource, op, key, item)
        return
    extension = rt.schema_for(path_text.strip())
    if extension is not None and extension is not rt.schema:
        # The whole extension as the path: its attributes are the value (or, for remove, all go).
        if op == "remove":
            resource.pop(extension.id, None)
            return
        if not isinstance(value, dict):
            raise errors.invalid_value(f"{extension.id} takes an object value.")
        if op == "replace":
            resource.pop(extension.id, None)
        for ext_key, ext_value in value.items():
            if ext_key.lower() != "schemas":
                apply(rt, resource, op, f"{extension.id}:{ext_key}", ext_value)
        return
    path = parse_path(rt, path_text)
    container = _container(resource, path, create=op != "remove")
    if container is None:
        return
    attr = path.attr
    if op == "remove":
        _remove(container, path, value)
        return
    if path.filter is not None:
        items = container.get(attr.name) or []
        hits = [item for item in items if matches(attr, item, path.filter)]
        if not hits:
            if op == "add" or path.sub is not None:
                # Entra sends replace emails[type eq "work"].value for a user without one: add that element.
                element = _element_from_filter(attr, path.filter)
                if element is None:
                    raise errors.no_target(f"No value of {attr.name} matches {path_text!r}.")
                items.append(element)
                hits = [element]
            else:
                raise errors.no_target(f"No value of {attr.name} matches {path_text!r}.")
        for item in hits:
            if path.sub is not None:
                item[path.sub.name] = _value(path.sub, value, f"{attr.name}.{path.sub.name}")
            else:
                item.update(_value(attr, value, attr.name))
        container[attr.name] = check_attr(attr, items, attr.name)
        return
    if path.sub is not None:
        if attr.multi:
            raise errors.invalid_path(f"Name which {attr.name} to change: {attr.name}[...].{path.sub.name}.")
        current = container.get(attr.name)
        current = current if isinstance(current, dict) else {}
        if value is None:
            current.pop(path.sub.name, None)
        else:
            current[path.sub.name] = _value(path.sub, value, f"{attr.name}.{path.sub.name}")
        container[attr.name] = current
        return
    if value is None:
        container.pop(attr.name, None)
        return
    if attr.multi:
        new = check_attr(attr, value, attr.name)
        if op == "add":
            existing = container.get(attr.name) or []
            merged = list(existing)
            for item in new:
                if item not in merged:
                    merged.append(item)
            if any(i.get("primary") is True for i in new if isinstance(i, dict)):
                for item in merged:
                    if isinstance(item, dict) and item not in new:
                        item.pop("primary", None)
            new = merged
        container[attr.name] = check_attr(attr, new, attr.name)
    elif attr.type == "complex" and op == "add":
        current = container.get(attr.name)
        merged_obj = dict(current) if isinstance(current, dict) else {}
        merged_obj.update(_value(attr, value, attr.name))
        container[attr.name] = merged_obj
    else:
        container[attr.name] = _value(attr, value, attr.name)


def _element_from_filter(attr: Attr, tree: ast.Filter) -> dict[str, Any] | None:
    """``emails[type eq "work"]`` → ``{"type": "work"}``: the element a filter of ``eq``s describes."""
    out: dict[str, Any] = {}

    def walk(node: Any) -> bool:
        if isinstance(node, ast.Filter):
            return not node.negated and node.namespace is None and walk(node.expr)
        if isinstance(node, ast.LogExpr):
            return node.op.lower() == "and" and walk(node.expr1) and walk(node.expr2)
        if isinstance(node, ast.AttrExpr) and node.value.lower() == "eq" and node.comp_value is not None:
            sub = attr.child(str(node.attr_path.attr_name))
            if sub is None:
                return False
            out[sub.name] = node.comp_value.value
            return True
        return False

    return out if walk(tree) and out else None


def _remove(container: dict[str, Any], path: Path, value: Any) -> None:
    attr = path.attr
    if attr.name not in container:
        return
    if path.filter is not None:
        items = container.get(attr.name) or []
        if path.sub is not None:
            for item in items:
                if matches(attr, item, path.filter):
                    item.pop(path.sub.name, None)
            container[attr.name] = items
        else:
            container[attr.name] = [item for item in items if not matches(attr, item, path.filter)]
        if not container[attr.name]:
            del container[attr.name]
        return
    if path.sub is not None:
        current = container.get(attr.name)
        if isinstance(current, dict):
            current.pop(path.sub.name, None)
        elif isinstance(current, list):
            for item in current:
                if isinstance(item, dict):
                    item.pop(path.sub.name, None)
        return
    if attr.multi and value is not None:
        # Okta and Entra remove some values of a multi-valued attribute: {"path": "emails", "value": [...]}.
        drop = value if isinstance(value, list) else [value]
        keys = [_get_key(d, "value") for d in drop if isinstance(d, dict)]
        wanted = {str(d[k]) for d, k in zip(drop, keys, strict=False) if isinstance(d, dict) and k}
        container[attr.name] = [
            item
            for item in container[attr.name]
            if not (isinstance(item, dict) and str(item.get("value")) in wanted)
        ]
        if not container[attr.name]:
            del container[attr.name]
        return
    if attr.required:
        raise errors.mutability(f"{attr.name} is required and cannot be removed.")
    del container[attr.name]
