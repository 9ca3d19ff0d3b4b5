"""The resources this server speaks (RFC 7643): attribute definitions that drive discovery (``/Schemas``),
input validation, filters, sorting and ``attributes``/``excludedAttributes`` alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SP_CONFIG = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
MEDIA_TYPE = "application/scim+json"


@dataclass(frozen=True, slots=True)
class Attr:
    """One attribute (RFC 7643 §2.2 characteristics)."""

    name: str
    type: str = "string"
    multi: bool = False
    required: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"
    returned: str = "default"
    uniqueness: str = "none"
    sub: tuple[Attr, ...] = ()
    canonical: tuple[str, ...] = ()
    reference_types: tuple[str, ...] = ()
    description: str = ""

    def child(self, name: str) -> Attr | None:
        """The sub-attribute called ``name`` (case-insensitive, as SCIM attribute names are)."""
        lowered = name.lower()
        return next((a for a in self.sub if a.name.lower() == lowered), None)

    def document(self) -> dict[str, Any]:
        """The attribute as ``/Schemas`` publishes it."""
        doc: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "multiValued": self.multi,
            "description": self.description or self.name,
            "required": self.required,
            "mutability": self.mutability,
            "returned": self.returned,
        }
        if self.type in {"string", "reference", "binary"}:
            doc["caseExact"] = self.case_exact
        if self.type in {"string", "reference", "binary", "integer", "decimal"}:
            doc["uniqueness"] = self.uniqueness
        if self.canonical:
            doc["canonicalValues"] = list(self.canonical)
        if self.reference_types:
            doc["referenceTypes"] = list(self.reference_types)
        if self.sub:
            doc["subAttributes"] = [a.document() for a in self.sub]
        return doc


@dataclass(frozen=True, slots=True)
class Schema:
    id: str
    name: str
    description: str
    attrs: tuple[Attr, ...]

    def attr(self, name: str) -> Attr | None:
        lowered = name.lower()
        return next((a for a in self.attrs if a.name.lower() == lowered), None)

    def document(self, base_url: str) -> dict[str, Any]:
        return {
            "schemas": [SCHEMA],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": [a.document() for a in self.attrs],
            "meta": {"resourceType": "Schema", "location": f"{base_url}/Schemas/{self.id}"},
        }


def _s(name: str, **kw: Any) -> Attr:
    return Attr(name, **kw)


def _multi(
    name: str, *, types: tuple[str, ...] = ("work", "home", "other"), value_type: str = "string"
) -> Attr:
    return Attr(
        name,
        "complex",
        multi=True,
        sub=(
            Attr("value", value_type),
            Attr("display"),
            Attr("type", canonical=types),
            Attr("primary", "boolean"),
        ),
    )


_NAME = Attr(
    "name",
    "complex",
    sub=(
        _s("formatted"),
        _s("familyName"),
        _s("givenName"),
        _s("middleName"),
        _s("honorificPrefix"),
        _s("honorificSuffix"),
    ),
)

USER_SCHEMA = Schema(
    USER,
    "User",
    "User Account",
    (
        Attr("userName", required=True, uniqueness="server"),
        _NAME,
        _s("displayName"),
        _s("nickName"),
        Attr("profileUrl", "reference", reference_types=("external",)),
        _s("title"),
        _s("userType"),
        _s("preferredLanguage"),
        _s("locale"),
        _s("timezone"),
        Attr("active", "boolean"),
        Attr("password", mutability="writeOnly", returned="never"),
        _multi("emails"),
        _multi("phoneNumbers", types=("work", "home", "mobile", "fax", "pager", "other")),
        _multi("ims", types=("aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo")),
        _multi("photos", types=("photo", "thumbnail"), value_type="reference"),
        Attr(
            "addresses",
            "complex",
            multi=True,
            sub=(
                _s("formatted"),
                _s("streetAddress"),
                _s("locality"),
                _s("region"),
                _s("postalCode"),
                _s("country"),
                Attr("type", canonical=("work", "home", "other")),
                Attr("primary", "boolean"),
            ),
        ),
        Attr(
            "groups",
            "complex",
            multi=True,
            mutability="readOnly",
            sub=(
                Attr("value", mutability="readOnly"),
                Attr("$ref", "reference", mutability="readOnly", reference_types=("Group",)),
                Attr("display", mutability="readOnly"),
                Attr("type", mutability="readOnly", canonical=("direct", "indirect")),
            ),
        ),
        _multi("entitlements", types=()),
        _multi("roles", types=()),
        _multi("x509Certificates", types=(), value_type="binary"),
    ),
)

ENTERPRISE_SCHEMA = Schema(
    ENTERPRISE,
    "EnterpriseUser",
    "Enterprise User",
    (
        _s("employeeNumber"),
        _s("costCenter"),
        _s("organization"),
        _s("division"),
        _s("department"),
        Attr(
            "manager",
            "complex",
            sub=(
                Attr("value"),
                Attr("$ref", "reference", reference_types=("User",)),
                Attr("displayName", mutability="readOnly"),
            ),
        ),
    ),
)

GROUP_SCHEMA = Schema(
    GROUP,
    "Group",
    "Group",
    (
        Attr("displayName", required=True, uniqueness="server"),
        Attr(
            "members",
            "complex",
            multi=True,
            sub=(
                Attr("value", mutability="immutable"),
                Attr("$ref", "reference", mutability="immutable", reference_types=("User", "Group")),
                Attr("display", mutability="readOnly"),
                Attr("type", mutability="immutable", canonical=("User", "Group")),
            ),
        ),
    ),
)

#: Attributes every resource has (RFC 7643 §3.1), outside any schema's attribute list.
COMMON = (
    Attr("id", case_exact=True, mutability="readOnly", returned="always", uniqueness="server"),
    Attr("externalId", case_exact=True),
    Attr(
        "meta",
        "complex",
        mutability="readOnly",
        sub=(
            Attr("resourceType", case_exact=True, mutability="readOnly"),
            Attr("created", "dateTime", mutability="readOnly"),
            Attr("lastModified", "dateTime", mutability="readOnly"),
            Attr("location", "reference", case_exact=True, mutability="readOnly"),
            Attr("version", case_exact=True, mutability="readOnly"),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class ResourceType:
    name: str
    endpoint: str
    schema: Schema
    extensions: tuple[Schema, ...] = field(default=())

    def schema_for(self, urn: str) -> Schema | None:
        """The core schema or an extension by URN (case-insensitive)."""
        lowered = urn.lower()
        return next((s for s in (self.schema, *self.extensions) if s.id.lower() == lowered), None)

    def document(self, base_url: str) -> dict[str, Any]:
        return {
            "schemas": [RESOURCE_TYPE],
            "id": self.name,
            "name": self.name,
            "endpoint": f"/{self.endpoint}",
            "description": self.schema.description,
            "schema": self.schema.id,
            "schemaExtensions": [{"schema": s.id, "required": False} for s in self.extensions],
            "meta": {"resourceType": "ResourceType", "location": f"{base_url}/ResourceTypes/{self.name}"},
        }


USERS = ResourceType("User", "Users", USER_SCHEMA, (ENTERPRISE_SCHEMA,))
GROUPS = ResourceType("Group", "Groups", GROUP_SCHEMA)
RESOURCE_TYPES = (USERS, GROUPS)
SCHEMAS = (USER_SCHEMA, ENTERPRISE_SCHEMA, GROUP_SCHEMA)


def service_provider_config(base_url: str, max_results: int) -> dict[str, Any]:
    """What this server supports (RFC 7643 §5)."""
    return {
        "schemas": [SP_CONFIG],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": max_results},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "The directory's token (portal_scim_...) in an Authorization: Bearer header.",
                "primary": True,
            }
        ],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base_url}/ServiceProviderConfig"},
    }


@dataclass(frozen=True, slots=True)
class Resolved:
    """An attribute path resolved against a resource type: where it lives and what it is."""

    #: None for the core schema (and the common attributes), else the extension's URN.
    extension: str | None
    attr: Attr
    sub: Attr | None = None

    @property
    def leaf(self) -> Attr:
        return self.sub or self.attr

    @property
    def dotted(self) -> str:
        return self.attr.name + (f".{self.sub.name}" if self.sub else "")


def resolve(rt: ResourceType, path: str) -> Resolved | None:
    """``name.givenName``, ``urn:...:User:employeeNumber``, ``emails.value`` → its definition, else None."""
    extension: str | None = None
    rest = path
    for ext in rt.extensions:
        if path.lower().startswith(ext.id.lower() + ":"):
            extension, rest = ext.id, path[len(ext.id) + 1 :]
            break
    else:
        if path.lower().startswith(rt.schema.id.lower() + ":"):
            rest = path[len(rt.schema.id) + 1 :]
    name, _, sub_name = rest.partition(".")
    if extension is not None:
        schema = rt.schema_for(extension)
        attr = schema.attr(name) if schema else None
    else:
        attr = rt.schema.attr(name) or next((a for a in COMMON if a.name.lower() == name.lower()), None)
    if attr is None:
        return None
    if not sub_name:
        return Resolved(extension, attr)
    sub = attr.child(sub_name)
    if sub is None:
        return None
    return Resolved(extension, attr, sub)
