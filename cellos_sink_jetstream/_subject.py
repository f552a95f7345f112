"""Per-tenant NATS subject templates.

A template is a NATS subject that may contain the placeholder ``{tenantId}``; for each
event it is replaced by the event's tenant id (or :data:`TENANT_ID_DEFAULT_TOKEN`). Both
the template and every tenant id are validated strictly, so a hostile tenant id can never
add a token, a wildcard or a control character to the subject.

This module is pure: it knows nothing of NATS or asyncio.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from cellos_sink_jetstream._errors import InvalidSubjectError
from cellos_sink_jetstream._event import CloudEventV1
from cellos_sink_jetstream._event_text import _preview

__all__ = [
    "MAX_SUBJECT_TEMPLATE_LENGTH",
    "TENANT_ID_DEFAULT_TOKEN",
    "TENANT_ID_EXTENSION",
    "TENANT_ID_PLACEHOLDER",
    "SubjectTemplate",
    "resolve_tenant_id",
    "resolve_tenant_subject",
    "validate_subject_template",
]

#: Replaced by the event's tenant id when a subject is resolved.
TENANT_ID_PLACEHOLDER = "{tenantId}"

#: Used in place of the tenant id for events that carry none. It starts with ``_``, which
#: no valid tenant id can, so no tenant can pose as "no tenant".
TENANT_ID_DEFAULT_TOKEN = "_default"  # noqa: S105 - a subject token, not a secret

#: CloudEvents extension attribute that carries the tenant id.
TENANT_ID_EXTENSION = "tenantid"

#: Longest accepted subject template, in characters.
MAX_SUBJECT_TEMPLATE_LENGTH = 256

_TENANT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# What a tenant id looks like, for error messages.
_TENANT_ID_RULE = (
    "a tenant id must be 1-64 ASCII characters from A-Z, a-z, 0-9, '_' and '-', "
    "starting with a letter or digit"
)
# Stands in for the placeholder while a template's tokens are checked: any valid tenant
# id yields the same token structure, because none contains '.'.
_SAMPLE_TENANT = "t"


def _template_error(template: str, problem: str) -> InvalidSubjectError:
    return InvalidSubjectError(f"invalid subject template {_preview(template)}: {problem}")


class SubjectTemplate:
    """A validated subject template, compiled once and resolved per event.

    Raises :class:`~cellos_sink_jetstream.InvalidSubjectError` on construction unless
    ``template`` is a safe NATS subject: dot-separated non-empty tokens of printable ASCII,
    no wildcards (``*``, ``>``), no whitespace, not starting with ``$`` (reserved for NATS
    system and JetStream API subjects), at most :data:`MAX_SUBJECT_TEMPLATE_LENGTH`
    characters, and no ``{``/``}`` except in the exact, case-sensitive placeholder
    ``{tenantId}``. The placeholder may stand for a whole token or part of one, and may
    occur more than once.
    """

    __slots__ = ("_parts", "_template")

    def __init__(self, template: str) -> None:
        _check_template(template)
        self._template = template
        # The literal text between placeholders; None for a fixed subject.
        self._parts: tuple[str, ...] | None = (
            tuple(template.split(TENANT_ID_PLACEHOLDER))
            if TENANT_ID_PLACEHOLDER in template
            else None
        )

    @property
    def template(self) -> str:
        """The template text as given."""
        return self._template

    @property
    def has_placeholder(self) -> bool:
        """Whether the subject depends on the event (the template contains ``{tenantId}``)."""
        return self._parts is not None

    def resolve(self, event: CloudEventV1) -> str:
        """Return the subject for ``event``.

        A template without the placeholder is returned as is, without looking at the
        event. Otherwise the placeholder is replaced by :func:`resolve_tenant_id` of the
        event, which raises :class:`~cellos_sink_jetstream.InvalidSubjectError` when the
        event carries an invalid tenant id or conflicting ones.
        """
        parts = self._parts
        if parts is None:
            return self._template
        tenant = resolve_tenant_id(event)
        if len(parts) == 2:
            return parts[0] + tenant + parts[1]
        return tenant.join(parts)

    def for_tenant(self, tenant: str) -> str:
        """The subject for a tenant id already resolved (and so already valid)."""
        parts = self._parts
        if parts is None:
            return self._template
        if len(parts) == 2:
            return parts[0] + tenant + parts[1]
        return tenant.join(parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SubjectTemplate):
            return self._template == other._template
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._template)

    def __repr__(self) -> str:
        return f"SubjectTemplate({self._template!r})"


def _check_template(template: object) -> None:
    if not isinstance(template, str):
        raise InvalidSubjectError(
            f"the subject template must be a str, got {type(template).__name__}"
        )
    if not template:
        raise InvalidSubjectError(
            "the subject template is empty; pass a NATS subject such as 'cellos.events' "
            f"or 'cellos.events.{TENANT_ID_PLACEHOLDER}'"
        )
    if len(template) > MAX_SUBJECT_TEMPLATE_LENGTH:
        raise _template_error(
            template,
            f"it is {len(template)} characters long, over the limit of "
            f"{MAX_SUBJECT_TEMPLATE_LENGTH}",
        )
    for index, char in enumerate(template):
        # Everything from space down, and DEL, is whitespace or a control character.
        if not char.isascii() or char <= " " or char == "\x7f":
            kind = "a non-ASCII" if not char.isascii() else "a whitespace or control"
            raise _template_error(
                template,
                f"it contains {kind} character U+{ord(char):04X} at index {index}; NATS "
                "subjects here must be printable ASCII without spaces",
            )
    if "*" in template or ">" in template:
        raise _template_error(
            template,
            "it contains a wildcard ('*' or '>'); events must be published to a concrete "
            "subject, so name it in full",
        )
    literal_text = template.replace(TENANT_ID_PLACEHOLDER, "")
    if "{" in literal_text or "}" in literal_text:
        stray = re.search(r"\{[^{}.]*\}?|\}", literal_text)
        shown = _preview(stray.group()) if stray is not None else "'{'"
        raise _template_error(
            template,
            f"{shown} is not a known placeholder; the only one is {TENANT_ID_PLACEHOLDER!r} "
            "(case-sensitive), and '{' and '}' are not allowed anywhere else",
        )
    tokens = template.replace(TENANT_ID_PLACEHOLDER, _SAMPLE_TENANT).split(".")
    if "" in tokens:
        raise _template_error(
            template,
            "it has an empty token (a leading or trailing '.', or '..'); every "
            "'.'-separated token must be non-empty",
        )
    if template.startswith("$"):
        raise _template_error(
            template,
            "subjects starting with '$' are reserved for NATS system and JetStream API "
            "subjects; choose another first token",
        )


@functools.lru_cache(maxsize=128)
def _compiled(template: str) -> SubjectTemplate:
    # Invalid templates raise, and lru_cache does not cache exceptions, so only valid
    # templates occupy the cache.
    return SubjectTemplate(template)


def _compile_cached(template: object) -> SubjectTemplate:
    try:
        # A non-str that hashes reaches SubjectTemplate, which rejects it.
        return _compiled(template)
    except TypeError:
        # Unhashable, so certainly not a str: report it like any other bad type.
        _check_template(template)
        raise


def validate_subject_template(template: str) -> None:
    """Raise :class:`~cellos_sink_jetstream.InvalidSubjectError` unless ``template`` is valid.

    The rules are those of :class:`SubjectTemplate`. Results are cached per template
    string, so calling this for every event is cheap.
    """
    _compile_cached(template)


def _tenant_id_sources(event: CloudEventV1) -> list[tuple[str, Any]]:
    """Return ``(where, value)`` for every place of ``event`` that carries a tenant id."""
    found: list[tuple[str, Any]] = []
    extension_value = event.extensions.get(TENANT_ID_EXTENSION)
    if extension_value is not None:
        found.append((f"extension {TENANT_ID_EXTENSION!r}", extension_value))
    data = event.data
    if isinstance(data, dict):
        correlation = data.get("correlation")
        if isinstance(correlation, dict):
            value = correlation.get("tenantId")
            if value is not None:
                found.append(("data['correlation']['tenantId']", value))
        spec = data.get("spec")
        if isinstance(spec, dict):
            correlation = spec.get("correlation")
            if isinstance(correlation, dict):
                value = correlation.get("tenantId")
                if value is not None:
                    found.append(("data['spec']['correlation']['tenantId']", value))
    return found


def _check_tenant_id(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidSubjectError(
            f"the tenant id in {where} must be a str, got {type(value).__name__}; {_TENANT_ID_RULE}"
        )
    if _TENANT_ID_RE.fullmatch(value) is None:
        raise InvalidSubjectError(
            f"the tenant id {_preview(value)} in {where} cannot be used in a NATS subject: "
            f"{_TENANT_ID_RULE}"
        )
    return value


def resolve_tenant_id(event: CloudEventV1) -> str:
    """Return the tenant id of ``event``, or :data:`TENANT_ID_DEFAULT_TOKEN` if it has none.

    The tenant id is read from the ``tenantid`` extension, ``data["correlation"]["tenantId"]``
    and ``data["spec"]["correlation"]["tenantId"]`` (the last two only where ``data`` and
    the nested values are dicts); a ``None`` value counts as absent. Raises
    :class:`~cellos_sink_jetstream.InvalidSubjectError` when a present value is not a valid
    tenant id, or when two places carry different values.
    """
    sources = _tenant_id_sources(event)
    if not sources:
        return TENANT_ID_DEFAULT_TOKEN
    where, value = sources[0]
    tenant = _check_tenant_id(where, value)
    for other_where, other_value in sources[1:]:
        _check_tenant_id(other_where, other_value)
        if other_value != tenant:
            raise InvalidSubjectError(
                f"the event carries conflicting tenant ids: {_preview(tenant)} in {where} but "
                f"{_preview(other_value)} in {other_where}; make them agree or drop one"
            )
    return tenant


def resolve_tenant_subject(template: str, event: CloudEventV1) -> str:
    """Return the subject for ``event`` under ``template`` (see :class:`SubjectTemplate`).

    Pure and cheap to call per event: the template is validated once per distinct string
    (cached). A template without ``{tenantId}`` is returned as is.
    """
    return _compile_cached(template).resolve(event)


def subject_for_tenant(template: str, tenant: str) -> str:
    """The subject under ``template`` for ``tenant``, an id :func:`resolve_tenant_id` gave."""
    return _compile_cached(template).for_tenant(tenant)
