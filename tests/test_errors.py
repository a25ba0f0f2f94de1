"""StudioError's optional field: core names the field, each front end spells it its own way."""

from core.errors import StudioError


def test_field_is_spelled_by_the_reader() -> None:
    exc = StudioError("{field} must lie in [0, 1]", field="mix")
    assert str(exc) == "mix must lie in [0, 1]"
    assert exc.render("the Mix slider") == "the Mix slider must lie in [0, 1]"
    assert exc.field == "mix"


def test_without_a_field_the_message_is_unchanged() -> None:
    exc = StudioError("template {prompt} and {response}")
    assert str(exc) == "template {prompt} and {response}" and exc.field is None
    assert exc.render("--x") == "template {prompt} and {response}"
