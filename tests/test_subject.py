"""Tests of :mod:`cellos_sink_jetstream._subject`: templates and tenant ids."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellos_sink_jetstream._errors import InvalidEventError, InvalidSubjectError
from cellos_sink_jetstream._event import CloudEventV1
from cellos_sink_jetstream._subject import (
    MAX_SUBJECT_TEMPLATE_LENGTH,
    TENANT_ID_DEFAULT_TOKEN,
    TENANT_ID_PLACEHOLDER,
    SubjectTemplate,
    _compiled,
    resolve_tenant_id,
    resolve_tenant_subject,
    validate_subject_template,
)

TEMPLATE = "cellos.events.{tenantId}"
VALID_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

#: Tenant ids an attacker (or a bug) might try to smuggle into a subject.
HOSTILE_TENANT_IDS = [
    "",
    ".",
    "a.b",
    "a.",
    ".a",
    "*",
    ">",
    "a*",
    "a>",
    "$",
    "$SYS",
    "$JS.API.STREAM.DELETE.CELLOS",
    " ",
    "a b",
    " a",
    "a ",
    "\t",
    "a\tb",
    "\r\n",
    "a\r\nPUB x 1",
    "a\n",
    "\x00",
    "a\x00",
    "\x7f",
    "caf\u00e9",
    "\uff41",  # fullwidth a
    "\u0661",  # Arabic-Indic digit one
    "a\u200bb",  # zero-width space
    "_default",
    "_a",
    "-a",
    "a" * 65,
    "a" * 10_000,
    "{tenantId}",
    "a/b",
    "a:b",
]


def event_with(
    *,
    extension: Any = None,
    correlation: Any = None,
    spec_correlation: Any = None,
    data: Any = None,
) -> CloudEventV1:
    """An event carrying the given tenant ids in the three places a tenant id is read from."""
    if data is None and (correlation is not None or spec_correlation is not None):
        data = {}
        if correlation is not None:
            data["correlation"] = {"tenantId": correlation}
        if spec_correlation is not None:
            data["spec"] = {"correlation": {"tenantId": spec_correlation}}
    extensions = {} if extension is None else {"tenantid": extension}
    return CloudEventV1(id="1", source="/s", type="t", data=data, extensions=extensions)


def assert_safe_message(excinfo: pytest.ExceptionInfo[InvalidSubjectError]) -> None:
    message = str(excinfo.value)
    assert len(message) < 600
    assert message.isascii()
    assert message.isprintable()


# --------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    "template",
    [
        "cellos.events",
        "cellos",
        "cellos.events.{tenantId}",
        "{tenantId}",
        "{tenantId}.events",
        "a.{tenantId}.b",
        "a.tenant-{tenantId}.b",
        "a.{tenantId}.{tenantId}",
        "A-Z_a-z.0-9.$x.#.~",
        "x" * MAX_SUBJECT_TEMPLATE_LENGTH,
    ],
)
def test_valid_templates(template: str) -> None:
    validate_subject_template(template)
    compiled = SubjectTemplate(template)
    assert compiled.template == template
    assert compiled.has_placeholder == (TENANT_ID_PLACEHOLDER in template)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("", "empty"),
        ("a..b", "empty token"),
        (".a", "empty token"),
        ("a.", "empty token"),
        (".", "empty token"),
        ("a.*", "wildcard"),
        ("a.>", "wildcard"),
        ("a.b*", "wildcard"),
        (">", "wildcard"),
        ("a.{tenantId}*", "wildcard"),
        ("a b", "U\\+0020"),
        ("a\tb", "U\\+0009"),
        ("a\r\nb", "U\\+000D"),
        ("a\nb", "U\\+000A"),
        ("a\x00b", "U\\+0000"),
        ("a\x7fb", "U\\+007F"),
        ("caf\u00e9.b", "non-ASCII"),
        ("a.\u00a0", "non-ASCII"),
        ("a.{tenantID}", "'\\{tenantID\\}' is not a known placeholder"),
        ("a.{tenant}", "not a known placeholder"),
        ("a.{TenantId}", "not a known placeholder"),
        ("a.{ tenantId }", "U\\+0020"),
        ("a.{tenantId", "not a known placeholder"),
        ("a.tenantId}", "not a known placeholder"),
        ("a.{{tenantId}}", "not a known placeholder"),
        ("a.{}", "not a known placeholder"),
        ("$JS.API.STREAM.CREATE.x", "reserved"),
        ("$SYS.x", "reserved"),
        ("x" * (MAX_SUBJECT_TEMPLATE_LENGTH + 1), "limit"),
        ("a.\u2028", "non-ASCII"),
    ],
)
def test_invalid_templates(template: str, expected: str) -> None:
    for check in (validate_subject_template, SubjectTemplate):
        with pytest.raises(InvalidSubjectError) as excinfo:
            check(template)
        assert re.search(expected, str(excinfo.value)), str(excinfo.value)
        assert_safe_message(excinfo)
    with pytest.raises(InvalidSubjectError):
        resolve_tenant_subject(template, event_with())


@pytest.mark.parametrize("template", [None, 1, b"a.b", ["a"], {"a": 1}])
def test_non_str_templates_are_rejected(template: Any) -> None:
    with pytest.raises(InvalidSubjectError) as excinfo:
        validate_subject_template(template)
    assert "str" in str(excinfo.value)
    with pytest.raises(InvalidSubjectError):
        resolve_tenant_subject(template, event_with())


def test_ten_kilobyte_template_is_truncated_in_the_message() -> None:
    with pytest.raises(InvalidSubjectError) as excinfo:
        validate_subject_template("a\r\n" * 3000)
    assert_safe_message(excinfo)


#: Template-ish text: mostly well-formed pieces, with every troublemaker in the mix.
template_pieces = st.sampled_from(
    [
        *("a", "b9", "-", "_", ".", "{tenantId}", "{tenantID}", "{", "}", "*", ">", "$"),
        *(" ", "\t", "\r\n", "\x00", "\x7f", "\u00e9", "\u2028"),
    ]
)
templates = st.one_of(st.text(max_size=40), st.lists(template_pieces, max_size=12).map("".join))


@given(templates)
@settings(max_examples=500)
def test_arbitrary_templates_are_either_rejected_or_safe(template: str) -> None:
    try:
        compiled = SubjectTemplate(template)
    except InvalidSubjectError as exc:
        rejection: str | None = str(exc)
    else:
        rejection = None
    if rejection is not None:
        assert rejection.isascii()
        return
    subject = compiled.resolve(event_with(extension="tenant1"))
    assert subject.isascii()
    assert subject.isprintable()
    assert " " not in subject
    assert "*" not in subject
    assert ">" not in subject
    assert "{" not in subject
    assert "}" not in subject
    assert all(subject.split("."))


def test_template_equality_and_repr() -> None:
    assert SubjectTemplate(TEMPLATE) == SubjectTemplate(TEMPLATE)
    assert SubjectTemplate(TEMPLATE) != SubjectTemplate("a.b")
    assert len({SubjectTemplate(TEMPLATE), SubjectTemplate(TEMPLATE)}) == 1
    assert repr(SubjectTemplate(TEMPLATE)) == f"SubjectTemplate({TEMPLATE!r})"
    with pytest.raises(AttributeError):
        SubjectTemplate(TEMPLATE).template = "a.>"  # type: ignore[misc]


def test_validation_is_cached_per_template() -> None:
    template = "cache.test.{tenantId}"
    validate_subject_template(template)
    hits = _compiled.cache_info().hits
    for _ in range(5):
        resolve_tenant_subject(template, event_with())
    assert _compiled.cache_info().hits == hits + 5


# --------------------------------------------------------------------------- resolution


def test_template_without_placeholder_is_returned_without_reading_the_event() -> None:
    hostile = event_with(correlation="a.b.>")
    assert resolve_tenant_subject("cellos.events", hostile) == "cellos.events"
    assert SubjectTemplate("cellos.events").resolve(hostile) == "cellos.events"


def test_no_tenant_id_gives_the_default_token() -> None:
    assert resolve_tenant_subject(TEMPLATE, event_with()) == "cellos.events._default"
    assert resolve_tenant_id(event_with()) == TENANT_ID_DEFAULT_TOKEN
    assert TENANT_ID_DEFAULT_TOKEN == "_default"
    assert VALID_TENANT.fullmatch(TENANT_ID_DEFAULT_TOKEN) is None


@pytest.mark.parametrize(
    "event",
    [
        event_with(extension="acme"),
        event_with(correlation="acme"),
        event_with(spec_correlation="acme"),
        event_with(extension="acme", correlation="acme"),
        event_with(extension="acme", spec_correlation="acme"),
        event_with(correlation="acme", spec_correlation="acme"),
        event_with(extension="acme", correlation="acme", spec_correlation="acme"),
    ],
    ids=["ext", "corr", "spec", "ext+corr", "ext+spec", "corr+spec", "all"],
)
def test_each_source_location_is_read(event: CloudEventV1) -> None:
    assert resolve_tenant_subject(TEMPLATE, event) == "cellos.events.acme"
    assert resolve_tenant_id(event) == "acme"


@pytest.mark.parametrize(
    "event",
    [
        event_with(extension="acme", correlation="other"),
        event_with(extension="acme", spec_correlation="other"),
        event_with(correlation="acme", spec_correlation="other"),
        event_with(extension="acme", correlation="acme", spec_correlation="other"),
        event_with(extension="acme", correlation="Acme"),
    ],
)
def test_conflicting_sources_are_rejected(event: CloudEventV1) -> None:
    with pytest.raises(InvalidSubjectError) as excinfo:
        resolve_tenant_subject(TEMPLATE, event)
    assert "conflicting" in str(excinfo.value)
    assert_safe_message(excinfo)


def test_conflict_message_truncates_long_values() -> None:
    with pytest.raises(InvalidSubjectError) as excinfo:
        resolve_tenant_id(event_with(extension="a" * 64, correlation="b" * 64))
    assert_safe_message(excinfo)


@pytest.mark.parametrize(
    "data",
    [
        [{"correlation": {"tenantId": "acme"}}],
        "acme",
        b"acme",
        {"correlation": "acme"},
        {"correlation": ["acme"]},
        {"spec": "acme"},
        {"spec": {"correlation": "acme"}},
        {"tenantId": "acme"},
        {"Correlation": {"tenantId": "acme"}},
        {"correlation": {"tenantid": "acme"}},
        {"correlation": {"tenantId": None}},
        {"spec": {"correlation": {"tenantId": None}}},
    ],
)
def test_other_data_shapes_carry_no_tenant(data: Any) -> None:
    event = CloudEventV1(id="1", source="/s", type="t", data=data)
    assert resolve_tenant_subject(TEMPLATE, event) == "cellos.events._default"


@pytest.mark.parametrize("tenant", ["a", "A", "0", "acme", "acme-prod_1", "a" * 64, "0-_"])
def test_valid_tenant_ids(tenant: str) -> None:
    for event in (event_with(extension=tenant), event_with(correlation=tenant)):
        assert resolve_tenant_subject(TEMPLATE, event) == f"cellos.events.{tenant}"


@pytest.mark.parametrize("tenant", HOSTILE_TENANT_IDS, ids=lambda tenant: ascii(tenant)[:30])
def test_hostile_tenant_ids_are_rejected(tenant: str) -> None:
    for where in ("correlation", "spec_correlation", "extension"):
        try:
            event = event_with(**{where: tenant})
        except InvalidEventError:
            # The extension cannot even hold control characters; nothing to resolve.
            assert where == "extension"
            continue
        with pytest.raises(InvalidSubjectError) as excinfo:
            resolve_tenant_subject(TEMPLATE, event)
        assert_safe_message(excinfo)
        with pytest.raises(InvalidSubjectError):
            SubjectTemplate("a.{tenantId}.b").resolve(event)


@pytest.mark.parametrize("tenant", [5, True, 1.5, ["acme"], {"id": "acme"}, b"acme"])
def test_non_str_tenant_ids_are_rejected(tenant: Any) -> None:
    for where in ("correlation", "spec_correlation", "extension"):
        try:
            event = event_with(**{where: tenant})
        except InvalidEventError:
            # Extensions hold only str/int/bool, and data cannot hold bytes below its top.
            assert where == "extension" or isinstance(tenant, bytes)
            continue
        with pytest.raises(InvalidSubjectError) as excinfo:
            resolve_tenant_subject(TEMPLATE, event)
        assert "must be a str" in str(excinfo.value)


@given(
    st.one_of(
        st.text(max_size=80),
        st.sampled_from(HOSTILE_TENANT_IDS),
        st.text(st.sampled_from(".*>$ \t\r\n\x00{}_-aZ9\u00e9"), max_size=10),
    ),
    st.sampled_from(
        [TEMPLATE, "{tenantId}", "a.{tenantId}.b", "a.t-{tenantId}", "a.{tenantId}.{tenantId}"]
    ),
)
@settings(max_examples=500)
def test_subject_is_template_tokens_plus_one_valid_tenant_token(tenant: str, template: str) -> None:
    try:
        event = event_with(correlation=tenant)
    except InvalidEventError:
        return  # a lone surrogate: the event itself is refused
    try:
        subject = resolve_tenant_subject(template, event)
    except InvalidSubjectError as exc:
        rejection: str | None = str(exc)
    else:
        rejection = None
    if rejection is not None:
        assert VALID_TENANT.fullmatch(tenant) is None
        assert rejection.isascii()
        return
    assert VALID_TENANT.fullmatch(tenant) is not None
    template_tokens = template.split(".")
    subject_tokens = subject.split(".")
    assert len(subject_tokens) == len(template_tokens)
    for template_token, subject_token in zip(template_tokens, subject_tokens):
        assert subject_token == template_token.replace(TENANT_ID_PLACEHOLDER, tenant)
    assert subject == template.replace(TENANT_ID_PLACEHOLDER, tenant)


@given(st.from_regex(VALID_TENANT, fullmatch=True))
def test_every_valid_tenant_id_resolves_to_one_token(tenant: str) -> None:
    subject = resolve_tenant_subject(TEMPLATE, event_with(extension=tenant, correlation=tenant))
    assert subject.split(".") == ["cellos", "events", tenant]
