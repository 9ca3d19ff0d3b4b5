"""SCIM filters (RFC 7644 §3.4.2.2) to parameterized SQL.

Parsing: the grammar is scim2-filter-parser's (sly) parser. Its lexer is not used: it reads numbers as one
digit (``NUMBER = r"[0-9]"``), strings without JSON escapes (``"a\\"b"`` ends at the backslash) and cannot say
where an error is, so :func:`tokenize` below hands the same token types to its parser. Its parser gives
``and`` and ``or`` the same precedence (``a or b and c`` comes out as ``(a or b) and c``); :func:`_regroup`
restores RFC 7644's order (``not`` > ``and`` > ``or``) from the tree, where explicit parentheses show up as
an extra ``Filter`` level. Its SQL transpiler is not used either: it compares case-sensitively
(``userName eq "BJensen"`` misses ``bjensen``) and writes ``ne`` as ``<>``, which drops rows where the
attribute is absent (NULL); here every comparison is ``(x IS NOT NULL AND ...)``, so ``ne`` and ``not`` are
the exact complement of ``eq``.

Values are always bound parameters (``{}`` placeholders for piccolo's ``raw``), never spliced into the SQL;
so are JSON paths. Only column names chosen from this module's own tables appear in the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scim2_filter_parser import ast
from scim2_filter_parser.parser import SCIMParser
from sly.lex import Token

from portal.scim import errors
from portal.scim.schema import GROUPS, USERS, Attr, Resolved, ResourceType, resolve

KEYWORDS = {
    "eq": "EQ",
    "ne": "NE",
    "co": "CO",
    "sw": "SW",
    "ew": "EW",
    "pr": "PR",
    "gt": "GT",
    "ge": "GE",
    "lt": "LT",
    "le": "LE",
    "and": "AND",
    "or": "OR",
    "not": "NOT",
    "true": "TRUE",
    "false": "FALSE",
    "null": "NULL",
}
_TOKEN = re.compile(
    r"""(?P<ws>[ \t]+)
    |(?P<LPAREN>\()|(?P<RPAREN>\))|(?P<LBRACKET>\[)|(?P<RBRACKET>\])
    |(?P<string>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")
    |(?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![\w$]))
    |(?P<uri>[a-zA-Z][a-zA-Z0-9+.-]*(?::[a-zA-Z0-9._-]+)+:(?=[a-zA-Z$]))
    |(?P<sub>\.[a-zA-Z$][\w$-]*)
    |(?P<name>[a-zA-Z$][\w$-]*)""",
    re.VERBOSE,
)
MAX_FILTER_LENGTH = 4000


def _token(kind: str, value: Any, index: int, end: int) -> Token:
    token = Token()
    token.type, token.value, token.lineno, token.index, token.end = kind, value, 1, index, end
    return token


def tokenize(text: str) -> Iterator[Token]:
    """The filter's tokens, typed for scim2-filter-parser's grammar; an unknown character is an error at its
    position."""
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise errors.invalid_filter(
                f"Invalid filter at position {pos}: unexpected character {text[pos]!r}."
            )
        kind = match.lastgroup or ""
        raw = match.group()
        end = match.end()
        if kind == "string":
            yield _token("COMP_VALUE", json.loads(raw), pos, end)
        elif kind == "number":
            number: float | int = float(raw) if any(c in raw for c in ".eE") else int(raw)
            yield _token("NUMBER", number, pos, end)
        elif kind == "uri":
            yield _token("SCHEMA_URI", raw.rstrip(":"), pos, end)
        elif kind == "sub":
            yield _token("SUBATTR", raw[1:], pos, end)
        elif kind == "name":
            keyword = KEYWORDS.get(raw.lower())
            if keyword == "TRUE":
                yield _token("TRUE", True, pos, end)
            elif keyword == "FALSE":
                yield _token("FALSE", False, pos, end)
            elif keyword == "NULL":
                yield _token("NULL", None, pos, end)
            else:
                yield _token(keyword or "ATTRNAME", raw, pos, end)
        elif kind != "ws":
            yield _token(kind, raw, pos, end)
        pos = end


def parse(text: str) -> ast.Filter:
    """The filter's tree, with RFC precedence; :class:`ScimError` ``invalidFilter`` naming the position."""
    if not text.strip():
        raise errors.invalid_filter("The filter is empty.")
    if len(text) > MAX_FILTER_LENGTH:
        raise errors.invalid_filter(f"The filter is longer than {MAX_FILTER_LENGTH} characters.")
    parser = SCIMParser()

    def error(token: Token | None) -> None:
        if token is None:
            raise errors.invalid_filter(f"Invalid filter at position {len(text)}: it ends too early.")
        raise errors.invalid_filter(
            f"Invalid filter at position {token.index}: unexpected {str(token.value)!r}."
        )

    parser.error = error
    try:
        tree = parser.parse(tokenize(text))
    except errors.ScimError:
        raise
    except Exception as exc:
        raise errors.invalid_filter(f"Invalid filter: {exc}.") from exc
    if not isinstance(tree, ast.Filter):
        raise errors.invalid_filter("Invalid filter.")
    return _regroup(tree)


def _chain(node: ast.Filter, out: list[Any]) -> None:
    """Operands and operators of an unparenthesized ``and``/``or`` chain, left to right."""
    expr = node.expr
    if isinstance(expr, ast.LogExpr) and not node.negated and node.namespace is None:
        _chain(expr.expr1, out)
        out.append(expr.op.lower())
        _chain(expr.expr2, out)
    else:
        out.append(_regroup(node))


def _regroup(node: ast.Filter) -> ast.Filter:
    """Rebuild ``and``/``or`` chains so that ``and`` binds tighter than ``or``."""
    expr = node.expr
    if isinstance(expr, ast.LogExpr) and not node.negated and node.namespace is None:
        items: list[Any] = []
        _chain(node, items)
        ors: list[ast.Filter] = []
        current = items[0]
        for op, operand in zip(items[1::2], items[2::2], strict=True):
            if op == "and":
                current = ast.Filter(ast.LogExpr("and", current, operand), False, None)
            else:
                ors.append(current)
                current = operand
        ors.append(current)
        result = ors[0]
        for operand in ors[1:]:
            result = ast.Filter(ast.LogExpr("or", result, operand), False, None)
        return result
    if isinstance(expr, ast.Filter):
        return ast.Filter(_regroup(expr), node.negated, node.namespace)
    return node


# --- to SQL ------------------------------------------------------------------------------------------------


@dataclass
class Sql:
    """A WHERE fragment with ``{}`` placeholders and its values, in order."""

    text: str
    values: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Target:
    """What a resource type's filters run against: its table and the attributes kept in columns."""

    rt: ResourceType
    table: str
    #: Dotted attribute (lowercase) → (column, case-insensitive key column?).
    columns: dict[str, tuple[str, bool]]
    #: Dotted attribute (lowercase) of the multi-valued membership attribute kept in scim_group_member.
    membership: str
    #: The column of scim_group_member that is this table's id, and the other one.
    membership_self: str
    membership_other: str


USER_TARGET = Target(
    USERS,
    "scim_user",
    {
        "id": ("id", False),
        "externalid": ("external_id", False),
        "username": ("user_name_key", True),
        "active": ("active", False),
        "meta.created": ("created_at", False),
        "meta.lastmodified": ("updated_at", False),
    },
    "groups",
    "member",
    '"group"',
)
GROUP_TARGET = Target(
    GROUPS,
    "scim_group",
    {
        "id": ("id", False),
        "externalid": ("external_id", False),
        "displayname": ("display_name_key", True),
        "meta.created": ("created_at", False),
        "meta.lastmodified": ("updated_at", False),
    },
    "members",
    '"group"',
    "member",
)


class Dialect:
    """The few places SQLite and PostgreSQL differ."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres

    def json_text(self, table: str, resolved: Resolved) -> Sql:
        """The attribute's value as text (NULL when absent) from the resource column."""
        keys = [k for k in (resolved.extension, resolved.attr.name, resolved.sub and resolved.sub.name) if k]
        if self.postgres:
            text = f"CAST({table}.resource AS JSONB)"
            for _key in keys[:-1]:
                text += " -> CAST({} AS TEXT)"
            return Sql(f"({text} ->> CAST({{}} AS TEXT))", list(keys))
        return Sql(f"json_extract({table}.resource, {{}})", [_sqlite_path(keys)])

    def json_node(self, table: str, keys: list[str]) -> Sql:
        if self.postgres:
            text = f"CAST({table}.resource AS JSONB)"
            for _ in keys:
                text += " -> CAST({} AS TEXT)"
            return Sql(f"({text})", list(keys))
        return Sql(f"json_extract({table}.resource, {{}})", [_sqlite_path(keys)])

    def elements(self, table: str, keys: list[str]) -> Sql:
        """A FROM item over a multi-valued attribute's elements, aliased ``e``."""
        if self.postgres:
            node = self.json_node(table, keys)
            return Sql(
                f"jsonb_array_elements(CASE WHEN jsonb_typeof({node.text}) = 'array' THEN {node.text}"
                " ELSE CAST('[]' AS JSONB) END) AS e(v)",
                node.values * 2,
            )
        return Sql(f"json_each({table}.resource, {{}}) AS e", [_sqlite_path(keys)])

    def element_text(self, sub: str | None) -> Sql:
        if self.postgres:
            if sub is None:
                return Sql(
                    "(CASE WHEN jsonb_typeof(e.v) IN ('object', 'array') THEN NULL ELSE e.v #>> ARRAY[]::TEXT[] END)"
                )
            return Sql("(e.v ->> CAST({} AS TEXT))", [sub])
        if sub is None:
            return Sql("(CASE WHEN e.type IN ('object', 'array') THEN NULL ELSE e.value END)")
        return Sql("json_extract(e.value, {})", [_sqlite_path([sub])])

    def boolean(self, value: bool, *, json: bool) -> Any:
        if json:
            return ("true" if value else "false") if self.postgres else int(value)
        return value


def _sqlite_path(keys: list[str]) -> str:
    return "$" + "".join("." + json.dumps(k) for k in keys)


_OPS = {"eq": "=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


class Translator:
    """Turns one parsed filter into SQL for ``target``."""

    def __init__(self, target: Target, dialect: Dialect) -> None:
        self.target = target
        self.dialect = dialect

    def where(self, tree: ast.Filter) -> Sql:
        return self._filter(tree, None)

    def _filter(self, node: Any, namespace: Any) -> Sql:
        if isinstance(node, ast.Filter):
            if node.namespace is not None:
                if namespace is not None:
                    raise errors.invalid_filter("A value filter cannot contain another value filter.")
                inner = self._value_path(node.namespace, node.expr)
            else:
                inner = self._filter(node.expr, namespace)
            return Sql(f"(NOT {inner.text})", inner.values) if node.negated else inner
        if isinstance(node, ast.LogExpr):
            left = self._filter(node.expr1, namespace)
            right = self._filter(node.expr2, namespace)
            op = "AND" if node.op.lower() == "and" else "OR"
            return Sql(f"({left.text} {op} {right.text})", left.values + right.values)
        if isinstance(node, ast.AttrExpr):
            return self._attr_expr(node, namespace)
        raise errors.invalid_filter("Invalid filter.")

    # -- attribute paths

    def _resolve(self, path: ast.AttrPath, namespace: ast.AttrPath | None) -> Resolved:
        if isinstance(path.attr_name, ast.Filter):
            raise errors.invalid_filter("A value filter is not allowed here.")
        if namespace is not None:
            outer = self._resolve(namespace, None)
            if outer.sub is not None or not outer.attr.sub:
                raise errors.invalid_filter(f"{outer.dotted} has no sub-attributes to filter on.")
            if path.uri is not None or path.sub_attr is not None:
                raise errors.invalid_filter(f"Inside {outer.dotted}[...] name its sub-attributes only.")
            sub = outer.attr.child(path.attr_name)
            if sub is None:
                raise errors.invalid_filter(f"{outer.attr.name} has no sub-attribute {path.attr_name!r}.")
            return Resolved(outer.extension, outer.attr, sub)
        dotted = (f"{path.uri}:" if path.uri else "") + path.attr_name
        if path.sub_attr is not None:
            dotted += "." + path.sub_attr.value
        resolved = resolve(self.target.rt, dotted)
        if resolved is None:
            raise errors.invalid_filter(f"Unknown attribute {dotted!r} in the filter.")
        if resolved.leaf.returned == "never":
            raise errors.invalid_filter(f"{dotted} cannot be filtered on.")
        return resolved

    def _value_path(self, namespace: ast.AttrPath, expr: Any) -> Sql:
        outer = self._resolve(namespace, None)
        if outer.attr.name.lower() == self.target.membership:
            return self._membership(expr, namespace)
        if not outer.attr.multi:
            # A value filter on a single complex attribute (name[givenName eq "x"]) is a plain filter.
            return self._filter(expr, namespace)
        keys = [k for k in (outer.extension, outer.attr.name) if k]
        source = self.dialect.elements(self.target.table, keys)
        inner = _ElementTranslator(self, outer).filter(expr)
        return _cat("EXISTS (SELECT 1 FROM ", source, " WHERE ", inner, ")")

    def _attr_expr(self, node: ast.AttrExpr, namespace: Any) -> Sql:
        if isinstance(node.attr_path.attr_name, ast.Filter):
            # ``emails[type eq "work"] pr`` style: the parser folds a value path into an attribute path.
            inner = node.attr_path.attr_name
            if node.value.lower() != "pr":
                raise errors.invalid_filter(
                    'Compare a sub-attribute: emails[type eq "work"].value is a path.'
                )
            return self._filter(inner, namespace)
        resolved = self._resolve(node.attr_path, namespace)
        op = node.value.lower()
        value = node.comp_value.value if node.comp_value is not None else None
        name = resolved.dotted.lower()
        if resolved.attr.name.lower() == self.target.membership:
            return self._membership_leaf(resolved, op, value)
        if resolved.extension is None and name in self.target.columns:
            column, folded = self.target.columns[name]
            return _compare(
                self.dialect,
                Sql(f"{self.target.table}.{column}"),
                resolved.leaf,
                op,
                value,
                folded_column=folded,
                json=False,
            )
        if resolved.extension is None and resolved.attr.name == "meta":
            return _meta_constant(self.target, resolved, op, value)
        if resolved.attr.multi:
            keys = [k for k in (resolved.extension, resolved.attr.name) if k]
            source = self.dialect.elements(self.target.table, keys)
            sub = resolved.sub or resolved.attr.child("value")
            leaf = self.dialect.element_text(sub.name if sub else None)
            cmp = _compare(self.dialect, leaf, sub or resolved.attr, op, value, json=True)
            return _cat("EXISTS (SELECT 1 FROM ", source, " WHERE ", cmp, ")")
        if resolved.leaf.type == "complex":
            if op != "pr":
                raise errors.invalid_filter(
                    f"{resolved.dotted} is complex: compare one of its sub-attributes."
                )
            keys = [k for k in (resolved.extension, resolved.attr.name) if k]
            node_sql = self.dialect.json_node(self.target.table, keys)
            return Sql(f"({node_sql.text} IS NOT NULL)", node_sql.values)
        return _compare(
            self.dialect,
            self.dialect.json_text(self.target.table, resolved),
            resolved.leaf,
            op,
            value,
            json=True,
        )

    # -- group membership (its own table)

    def _membership(self, expr: Any, namespace: ast.AttrPath) -> Sql:
        return self._filter_membership(expr, namespace)

    def _filter_membership(self, node: Any, namespace: ast.AttrPath) -> Sql:
        if isinstance(node, ast.Filter):
            if node.namespace is not None:
                raise errors.invalid_filter("A value filter cannot contain another value filter.")
            inner = self._filter_membership(node.expr, namespace)
            return Sql(f"(NOT {inner.text})", inner.values) if node.negated else inner
        if isinstance(node, ast.LogExpr):
            left = self._filter_membership(node.expr1, namespace)
            right = self._filter_membership(node.expr2, namespace)
            op = "AND" if node.op.lower() == "and" else "OR"
            return Sql(f"({left.text} {op} {right.text})", left.values + right.values)
        resolved = self._resolve(node.attr_path, namespace)
        value = node.comp_value.value if node.comp_value is not None else None
        return self._membership_leaf(resolved, node.value.lower(), value)

    def _membership_leaf(self, resolved: Resolved, op: str, value: Any) -> Sql:
        sub = (resolved.sub.name if resolved.sub else "value").lower()
        if sub == "type":
            kind = "User" if self.target is GROUP_TARGET else "direct"
            matches = _constant_compare(kind, op, value)
            return Sql("(1 = 1)" if matches else "(1 = 0)")
        if sub != "value":
            raise errors.invalid_filter(f"{resolved.attr.name}.{sub} cannot be filtered on; use value.")
        t = self.target
        base = f"SELECT 1 FROM scim_group_member gm WHERE gm.{t.membership_self} = {t.table}.id"  # noqa: S608 (fixed names and {} placeholders only)
        if op == "pr":
            return Sql(f"EXISTS ({base})")
        cmp = _compare(
            self.dialect,
            Sql(f"gm.{t.membership_other}"),
            Attr("value", case_exact=True),
            op,
            value,
            json=False,
        )
        return _cat(f"EXISTS ({base} AND ", cmp, ")")


class _ElementTranslator:
    """Conditions on one element (``e``) of a multi-valued attribute, inside ``attr[...]``."""

    def __init__(self, parent: Translator, outer: Resolved) -> None:
        self.parent = parent
        self.outer = outer

    def filter(self, node: Any) -> Sql:
        if isinstance(node, ast.Filter):
            if node.namespace is not None:
                raise errors.invalid_filter("A value filter cannot contain another value filter.")
            inner = self.filter(node.expr)
            return Sql(f"(NOT {inner.text})", inner.values) if node.negated else inner
        if isinstance(node, ast.LogExpr):
            left = self.filter(node.expr1)
            right = self.filter(node.expr2)
            op = "AND" if node.op.lower() == "and" else "OR"
            return Sql(f"({left.text} {op} {right.text})", left.values + right.values)
        if not isinstance(node, ast.AttrExpr):
            raise errors.invalid_filter("Invalid filter.")
        path = node.attr_path
        if isinstance(path.attr_name, ast.Filter) or path.uri or path.sub_attr:
            raise errors.invalid_filter(f"Inside {self.outer.attr.name}[...] name its sub-attributes only.")
        sub = self.outer.attr.child(path.attr_name)
        if sub is None:
            raise errors.invalid_filter(f"{self.outer.attr.name} has no sub-attribute {path.attr_name!r}.")
        leaf = self.parent.dialect.element_text(sub.name)
        value = node.comp_value.value if node.comp_value is not None else None
        return _compare(self.parent.dialect, leaf, sub, node.value.lower(), value, json=True)


class _P:
    """A bound value inside :func:`_cat`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _cat(*parts: str | Sql | _P) -> Sql:
    """SQL text and values joined in order: literal text, fragments with their values, and bound values."""
    text: list[str] = []
    values: list[Any] = []
    for part in parts:
        if isinstance(part, str):
            text.append(part)
        elif isinstance(part, _P):
            text.append("{}")
            values.append(part.value)
        else:
            text.append(part.text)
            values.extend(part.values)
    return Sql("".join(text), values)


def _compare(
    dialect: Dialect,
    x: Sql,
    attr: Attr,
    op: str,
    value: Any,
    *,
    folded_column: bool = False,
    json: bool,
) -> Sql:
    """``x op value`` for an attribute of ``attr``'s type; never NULL (absent attributes compare false)."""
    present = _cat("(", x, " IS NOT NULL")
    if op == "pr":
        if attr.type in {"string", "reference", "binary"}:
            return _cat(present, " AND ", x, " <> '')")
        return _cat(present, ")")
    if value is None:
        if op == "eq":
            return _cat("(", x, " IS NULL)")
        if op == "ne":
            return _cat(present, ")")
        raise errors.invalid_filter(f"{op} cannot compare with null.")
    if op not in {"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"}:
        raise errors.invalid_filter(f"The operator {op!r} is not supported.")
    negate = op == "ne"
    if negate:
        op = "eq"
    if attr.type == "boolean":
        if not isinstance(value, bool):
            raise errors.invalid_filter(f"{attr.name} is a boolean: compare it with true or false.")
        if op != "eq":
            raise errors.invalid_filter(f"{attr.name} is a boolean: only eq, ne and pr apply.")
        sql = _cat(present, " AND ", x, " = ", _P(dialect.boolean(value, json=json)), ")")
    elif attr.type == "dateTime":
        if not isinstance(value, str):
            raise errors.invalid_filter(f"{attr.name} is a date and time: compare it with a string.")
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise errors.invalid_filter(
                f"{value!r} is not a date and time like 2026-01-31T12:00:00Z."
            ) from exc
        if when.tzinfo is None:
            raise errors.invalid_filter(f"{value!r} needs a time zone (Z or +01:00).")
        if op not in _OPS:
            raise errors.invalid_filter(f"{op} does not apply to dates.")
        sql = _cat(present, " AND ", x, f" {_OPS[op]} ", _P(when), ")")
    else:
        if isinstance(value, bool):
            raise errors.invalid_filter(f"{attr.name} is a {attr.type}: compare it with a string.")
        text = value if isinstance(value, str) else str(value)
        target = x
        if not attr.case_exact:
            text = text.lower()
            if not folded_column:
                target = _cat("lower(", x, ")")
        if op in _OPS:
            sql = _cat(present, " AND ", target, f" {_OPS[op]} ", _P(text), ")")
        elif text == "":
            sql = _cat(present, ")")
        elif op == "co":
            fn = "strpos" if dialect.postgres else "instr"
            sql = _cat(present, f" AND {fn}(", target, ", ", _P(text), ") > 0)")
        elif op == "sw":
            sql = _cat(present, " AND substr(", target, ", 1, ", _P(len(text)), ") = ", _P(text), ")")
        elif dialect.postgres:
            sql = _cat(present, " AND right(", target, ", ", _P(len(text)), ") = ", _P(text), ")")
        else:
            sql = _cat(present, " AND substr(", target, ", ", _P(-len(text)), ") = ", _P(text), ")")
    if negate:
        return _cat("(NOT ", sql, ")")
    return sql


def _constant_compare(actual: str, op: str, value: Any) -> bool:
    if op == "pr":
        return True
    if not isinstance(value, str):
        return op == "ne"
    if op == "eq":
        return actual.lower() == value.lower()
    if op == "ne":
        return actual.lower() != value.lower()
    if op == "co":
        return value.lower() in actual.lower()
    if op == "sw":
        return actual.lower().startswith(value.lower())
    if op == "ew":
        return actual.lower().endswith(value.lower())
    raise errors.invalid_filter(f"{op} does not apply here.")


def _meta_constant(target: Target, resolved: Resolved, op: str, value: Any) -> Sql:
    sub = resolved.sub.name if resolved.sub else ""
    if sub == "resourceType":
        return Sql("(1 = 1)" if _constant_compare(target.rt.name, op, value) else "(1 = 0)")
    raise errors.invalid_filter(f"meta.{sub} cannot be filtered on.")


def to_sql(text: str, target: Target, *, postgres: bool) -> Sql:
    """The WHERE fragment for filter ``text`` on ``target`` (``ScimError`` ``invalidFilter`` if it is not one)."""
    tree = parse(text)
    sql = Translator(target, Dialect(postgres)).where(tree)
    if sql.text.count("{}") != len(sql.values):  # pragma: no cover - a bug here must not reach the database
        raise errors.ScimError(500, "filter translation error")
    return sql
