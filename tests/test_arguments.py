"""The one argument validator (unit tier: no database): every supported annotation,
with the exact error text every entry point shows."""

import dataclasses
import enum
from typing import Annotated, Any, Literal, NewType, NotRequired, Optional, TypedDict

import pydantic
import pytest

from django_tasks_live.arguments import ArgumentError, for_handler, from_form, validate
from django_tasks_live.registry import TaskSpec


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Window(TypedDict):
    width: int
    title: NotRequired[str]


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    color: Color = Color.RED


class User(pydantic.BaseModel):
    name: str
    age: int


UserId = NewType("UserId", int)


def handler(
    ctx,
    i: int = 0,
    f: float = 0.0,
    b: bool = False,
    s: str = "",
    li: list[int] | None = None,
    ds: dict[str, float] | None = None,
    opt: Optional[int] = None,  # noqa: UP045 (the typing spelling is what is tested)
    union: int | str = 0,
    lit: Literal["a", "b", 3] = "a",
    color: Color = Color.RED,
    level: Level = Level.LOW,
    window: Window | None = None,
    point: Point | None = None,
    shape: Shape | None = None,
    user: User | None = None,
    pair: tuple[int, str] = (0, ""),
    many: tuple[int, ...] = (),
    uid: UserId = UserId(0),
    sized: Annotated[int, "a size"] = 0,
    anything=None,
    anyjson: Any = None,
    nothing: None = None,
):
    return None


SPEC = TaskSpec(name="typed", func=handler)


def error_of(**kwargs: Any) -> str:
    with pytest.raises(ArgumentError) as info:
        validate(SPEC, (), kwargs)
    return str(info.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"i": "1"}, "parameter 'i' expected int, got '1' (str)."),
    ({"i": True}, "parameter 'i' expected int, got True (bool)."),
    ({"i": 1.0}, "parameter 'i' expected int, got 1.0 (float)."),
    ({"f": "1.5"}, "parameter 'f' expected float, got '1.5' (str)."),
    ({"f": False}, "parameter 'f' expected float, got False (bool)."),
    ({"b": 1}, "parameter 'b' expected bool, got 1 (int)."),
    ({"b": "true"}, "parameter 'b' expected bool, got 'true' (str)."),
    ({"s": 5}, "parameter 's' expected str, got 5 (int)."),
    ({"s": None}, "parameter 's' expected str, got None."),
    ({"li": [1, "2"]}, "parameter 'li[1]' expected int, got '2' (str)."),
    ({"li": {"a": 1}}, "parameter 'li' expected list[int] or None, got {'a': 1} (dict)."),
    ({"ds": {"a": 1, "b": "x"}}, "parameter \"ds['b']\" expected float, got 'x' (str)."),
    ({"ds": [1]}, "parameter 'ds' expected dict[str, float] or None, got [1] (list)."),
    ({"opt": "x"}, "parameter 'opt' expected int or None, got 'x' (str)."),
    ({"union": 1.5}, "parameter 'union' expected int or str, got 1.5 (float)."),
    ({"lit": "c"}, "parameter 'lit' expected one of 'a', 'b', 3, got 'c' (str)."),
    ({"lit": 3.0}, "parameter 'lit' expected one of 'a', 'b', 3, got 3.0 (float)."),
    ({"color": "blue"}, "parameter 'color' expected Color (one of 'red', 'green'), got 'blue' (str)."),
    ({"color": Level.LOW}, "parameter 'color' expected Color (one of 'red', 'green'), "
                           "got <Level.LOW: 1> (Level)."),
    ({"level": True}, "parameter 'level' expected Level (one of 1, 2), got True (bool)."),
    ({"window": {"title": "x"}}, "parameter \"window['width']\" expected int (a required field of "
                                 "Window), got nothing."),
    ({"window": {"width": 1, "height": 2}}, "parameter \"window['height']\" expected no such field "
                                            "(Window has: width, title), got 2 (int)."),
    ({"window": {"width": "1"}}, "parameter \"window['width']\" expected int, got '1' (str)."),
    ({"window": 3}, "parameter 'window' expected Window object or None, got 3 (int)."),
    ({"point": {"x": 1.5}}, "parameter \"point['x']\" expected int, got 1.5 (float)."),
    ({"point": {"y": 1}}, "parameter \"point['x']\" expected int (a required field of Point), got nothing."),
    ({"shape": {"name": "s", "points": [{"x": 1}, {"x": "2"}]}},
     "parameter \"shape['points'][1]['x']\" expected int, got '2' (str)."),
    ({"shape": {"name": "s", "points": [], "color": "pink"}},
     "parameter \"shape['color']\" expected Color (one of 'red', 'green'), got 'pink' (str)."),
    ({"user": {"name": "ann", "age": "old"}},
     "parameter \"user['age']\" expected User field: Input should be a valid integer, unable to "
     "parse string as an integer, got 'old' (str)."),
    ({"user": "ann"}, "parameter 'user' expected User object or None, got 'ann' (str)."),
    ({"pair": [1]}, "parameter 'pair' expected tuple[int, str] (an array of 2 items), got [1] (list)."),
    ({"pair": [1, 2]}, "parameter 'pair[1]' expected str, got 2 (int)."),
    ({"many": [1, None]}, "parameter 'many[1]' expected int, got None."),
    ({"uid": "7"}, "parameter 'uid' expected int, got '7' (str)."),
    ({"sized": False}, "parameter 'sized' expected int, got False (bool)."),
    ({"nothing": 0}, "parameter 'nothing' expected None, got 0 (int)."),
])
def test_a_mismatch_names_the_parameter_what_it_expected_and_what_it_got(kwargs, message):
    assert error_of(**kwargs) == f"Bad arguments for task 'typed': {message}"


def test_the_error_carries_its_parts():
    with pytest.raises(ArgumentError) as info:
        validate(SPEC, (), {"li": [1, "2"]})
    assert (info.value.task, info.value.parameter, info.value.expected, info.value.got) == (
        "typed", "li[1]", "int", "'2' (str)")
    assert isinstance(info.value, TypeError)  # what callers of start() always caught


@pytest.mark.parametrize("kwargs", [
    {"i": 3, "f": 2, "b": True, "s": "x"},
    {"f": 2.5, "li": [], "ds": {"a": 1, "b": 2.5}, "opt": None},
    {"opt": 4, "union": "four", "lit": 3, "level": 2},
    {"window": {"width": 3}, "point": {"x": 1}, "many": [1, 2, 3], "pair": [1, "a"]},
    {"user": {"name": "ann", "age": 3}, "uid": 9, "sized": 4, "nothing": None},
    {"anything": {"deep": [1, {"x": None}]}, "anyjson": [True, "x"]},
])
def test_values_that_fit_pass_unchanged(kwargs):
    assert validate(SPEC, (), kwargs) == ([], kwargs)


def test_python_values_are_stored_as_their_json():
    _, kwargs = validate(SPEC, (), {
        "color": Color.GREEN, "level": Level.HIGH, "point": Point(2, 3),
        "shape": Shape("tri", [Point(1)], Color.GREEN), "user": User(name="ann", age=3),
        "pair": (1, "a"), "many": (1, 2),
    })
    assert kwargs == {
        "color": "green", "level": 2, "point": {"x": 2, "y": 3},
        "shape": {"name": "tri", "points": [{"x": 1, "y": 0}], "color": "green"},
        "user": {"name": "ann", "age": 3}, "pair": [1, "a"], "many": [1, 2],
    }


def test_the_handler_gets_what_its_annotations_ask_for():
    _, stored = validate(SPEC, (), {
        "color": Color.GREEN, "level": Level.HIGH, "point": Point(2, 3),
        "shape": Shape("tri", [Point(1)]), "user": User(name="ann", age=3), "pair": (1, "a"),
        "many": [1], "window": {"width": 2}, "i": 4,
    })
    _, kwargs = for_handler(SPEC, [], stored)
    assert kwargs == {
        "color": Color.GREEN, "level": Level.HIGH, "point": Point(2, 3),
        "shape": Shape("tri", [Point(1, 0)], Color.RED), "user": User(name="ann", age=3),
        "pair": (1, "a"), "many": (1,), "window": {"width": 2}, "i": 4,
    }


def test_stored_arguments_that_no_longer_fit_fail_the_call():
    with pytest.raises(ArgumentError, match="parameter 'color' expected Color"):
        for_handler(SPEC, [], {"color": "blue"})


def plain(ctx, a: int, b: str = ""):
    return None


def test_plain_handlers_pass_through_for_handler():
    spec = TaskSpec(name="plain", func=plain)
    stored = {"a": 1}
    assert for_handler(spec, [], stored) == ([], stored)


def test_positional_arguments_are_checked_by_position():
    spec = TaskSpec(name="plain", func=plain)
    assert validate(spec, (1, "x"), {}) == ([1, "x"], {})
    with pytest.raises(ArgumentError, match=r"^Bad arguments for task 'plain': parameter 'b' expected "
                                            r"str, got 2 \(int\)\.$"):
        validate(spec, (1, 2), {})


def test_signature_errors_keep_their_words():
    spec = TaskSpec(name="plain", func=plain)
    with pytest.raises(ArgumentError, match=r"^Bad arguments for task 'plain': missing a required "
                                            r"argument: 'a'$") as info:
        validate(spec, (), {})
    assert info.value.parameter is None
    with pytest.raises(ArgumentError, match="unexpected keyword argument 'c'"):
        validate(spec, (), {"a": 1, "c": 2})


def varargs(ctx, first: int, *rest: str, **options: bool):
    return None


def test_star_parameters_check_each_value():
    spec = TaskSpec(name="var", func=varargs)
    assert validate(spec, (1, "a", "b"), {"x": True}) == ([1, "a", "b"], {"x": True})
    with pytest.raises(ArgumentError, match=r"parameter 'args\[2\]' expected str, got 3 \(int\)"):
        validate(spec, (1, "a", 3), {})
    with pytest.raises(ArgumentError, match=r"parameter 'x' expected bool, got 'yes' \(str\)"):
        validate(spec, (1,), {"x": "yes"})


def postponed(ctx, rows: "int", missing: "NoSuchType" = None):  # noqa: F821
    return None


def test_postponed_annotations_are_resolved_and_unknown_names_accept_any_json():
    spec = TaskSpec(name="later", func=postponed)
    with pytest.raises(ArgumentError, match=r"parameter 'rows' expected int, got '1' \(str\)"):
        validate(spec, (), {"rows": "1"})
    assert validate(spec, (), {"rows": 1, "missing": {"any": ["json"]}})[1]["missing"] == {"any": ["json"]}


def test_values_json_cannot_hold_are_refused_after_the_types():
    with pytest.raises(TypeError, match="JSON cannot represent"):
        validate(SPEC, (), {"f": float("inf")})
    with pytest.raises(TypeError, match=r"kwargs\['anything'\] is a set"):
        validate(SPEC, (), {"anything": {1}})


@pytest.mark.parametrize(("name", "values", "expected"), [
    ("i", ["5"], 5),
    ("i", ["five"], "five"),  # left as text: validate() then says what was expected
    ("f", ["2.5"], 2.5),
    ("b", ["on"], True),
    ("b", ["false"], False),
    ("b", ["maybe"], "maybe"),
    ("s", ["5"], "5"),
    ("li", ["1", "2"], [1, 2]),
    ("li", ["7"], [7]),
    ("li", ["[1, 2]"], [1, 2]),
    ("opt", [""], None),
    ("opt", ["3"], 3),
    ("union", ["3"], 3),
    ("union", ["x"], "x"),
    ("lit", ["3"], 3),
    ("lit", ["b"], "b"),
    ("level", ["2"], 2),
    ("color", ["green"], "green"),
    ("point", ['{"x": 1}'], {"x": 1}),
    ("ds", ['{"a": 1}'], {"a": 1}),
    ("anything", ["text"], "text"),
    ("anything", ["a", "b"], ["a", "b"]),
])
def test_form_text_becomes_the_annotated_type(name, values, expected):
    assert from_form(SPEC, name, values) == expected


def untyped(ctx, rows=10, ratio=0.5, flag=False, label="x"):
    return None


def test_form_text_of_unannotated_parameters_follows_the_default():
    spec = TaskSpec(name="untyped", func=untyped)
    assert [from_form(spec, n, [v]) for n, v in
            [("rows", "3"), ("ratio", "1.5"), ("flag", "yes"), ("label", "7")]] == [3, 1.5, True, "7"]
