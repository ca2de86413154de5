"""Tests of lazylab.lab.config (parsing, resolution, hashing) and lazylab.lab.sweep (the grid)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazylab.lab.config import (
    canonical_json,
    coerce,
    config_hash,
    make_config,
    parse_value,
    resolve,
    split_top_level,
)
from lazylab.lab.registry import Preset
from lazylab.lab.sweep import grid


@dataclass
class Cfg:
    seed: int = 0
    lr: float = 0.1
    steps: int = 10
    name: str = "a"
    flag: bool = False
    widths: list[int] = field(default_factory=lambda: [8, 8])
    shape: tuple[int, ...] = (2, 3)
    mode: Literal["full", "lazy"] = "full"
    cap: Optional[int] = None  # noqa: UP045 (typing.Optional must work too)


def test_parse_value_by_type():
    assert parse_value("3", int, "k") == 3
    assert parse_value("1e-3", float, "k") == 1e-3
    assert parse_value("2", float, "k") == 2.0 and isinstance(parse_value("2", float, "k"), float)
    for t in ("true", "True", "yes", "1", "on"):
        assert parse_value(t, bool, "k") is True
    for f in ("false", "No", "0", "off"):
        assert parse_value(f, bool, "k") is False
    assert parse_value("hello", str, "k") == "hello"
    assert parse_value("[1,2,3]", list[int], "k") == [1, 2, 3]
    assert parse_value("1,2", list[int], "k") == [1, 2]
    assert parse_value("[]", list[int], "k") == []
    assert parse_value("(4, 5)", tuple[int, ...], "k") == (4, 5)
    assert parse_value("[[1,2],[3]]", list[list[int]], "k") == [[1, 2], [3]]
    assert parse_value("none", Optional[int], "k") is None  # noqa: UP045
    assert parse_value("7", int | None, "k") == 7
    assert parse_value("lazy", Literal["full", "lazy"], "k") == "lazy"


@pytest.mark.parametrize("text,tp,expected", [
    ("abc", int, "int"), ("1.5", int, "int"), ("x", float, "float"), ("maybe", bool, "bool"),
    ("[1,a]", list[int], "int"),
])
def test_parse_value_wrong_type_names_key_and_type(text, tp, expected):
    with pytest.raises(TypeError) as ei:
        parse_value(text, tp, "mykey")
    msg = str(ei.value)
    assert "mykey" in msg and f"type {expected}" in msg


def test_literal_rejects_other_choice():
    with pytest.raises(TypeError, match=r"mode.*\['full', 'lazy'\].*'medium'"):
        parse_value("medium", Literal["full", "lazy"], "mode")


def test_coerce_python_values():
    assert coerce(3, float, "k") == 3.0 and isinstance(coerce(3, float, "k"), float)
    assert coerce([1, 2], tuple[int, ...], "k") == (1, 2)
    assert coerce("5", int, "k") == 5
    with pytest.raises(TypeError, match="k"):
        coerce(True, int, "k")  # bools are not ints here
    with pytest.raises(TypeError):
        coerce(1.5, int, "k")
    with pytest.raises(TypeError):
        coerce(None, int, "k")
    with pytest.raises(TypeError):
        coerce(1, str, "k")


def test_resolution_order_defaults_preset_cli():
    preset = Preset(set={"lr": 0.5, "steps": 20}, sweep={"seed": [0, 1], "lr": [1, 2]})
    r = resolve(Cfg, preset, ["steps=30", "name=b"], ["lr=0.01,0.02,0.03"])
    assert r.base["lr"] == 0.5          # preset.set beats the default
    assert r.base["steps"] == 30        # --set beats preset.set
    assert r.base["name"] == "b"
    assert r.base["flag"] is False      # default kept
    assert r.sweep == {"seed": [0, 1], "lr": [0.01, 0.02, 0.03]}  # CLI replaces preset's lr grid
    # preset sweep values are coerced to the field's type (int 1 -> float 1.0)
    assert resolve(Cfg, preset).sweep["lr"] == [1.0, 2.0]


def test_resolve_errors():
    with pytest.raises(ValueError) as ei:
        resolve(Cfg, None, ["nope=1"])
    msg = str(ei.value)
    assert "'nope'" in msg and "valid keys" in msg and "lr" in msg and "seed" in msg
    with pytest.raises(ValueError, match="valid keys"):
        resolve(Cfg, None, None, ["bogus=1,2"])
    with pytest.raises(TypeError, match="steps.*int.*'ten'"):
        resolve(Cfg, None, ["steps=ten"])
    with pytest.raises(TypeError, match="lr"):
        resolve(Cfg, None, None, ["lr=0.1,fast"])
    with pytest.raises(ValueError, match="empty sweep"):
        resolve(Cfg, None, None, ["lr="])
    with pytest.raises(ValueError, match="empty sweep"):
        resolve(Cfg, None, None, {"lr": []})
    with pytest.raises(ValueError, match="empty value"):
        resolve(Cfg, None, None, ["lr=0.1,,0.2"])
    with pytest.raises(ValueError, match="key=value"):
        resolve(Cfg, None, ["lr"])


def test_sweep_of_list_field_needs_brackets():
    r = resolve(Cfg, None, None, ["widths=[4,4],[8,8,8]"])
    assert r.sweep["widths"] == [[4, 4], [8, 8, 8]]
    assert split_top_level("[1,2],(3,4),5") == ["[1,2]", "(3,4)", "5"]


def test_grid_is_cartesian_product_with_stable_ids():
    r = resolve(Cfg, Preset(sweep={"seed": [0, 1, 2]}), None, ["lr=0.1,0.2", "flag=true,false"])
    cells = grid(r)
    assert len(cells) == 3 * 2 * 2
    expected = list(itertools.product([0, 1, 2], [0.1, 0.2], [True, False]))
    assert [(c.params["seed"], c.params["lr"], c.params["flag"]) for c in cells] == expected
    for c in cells:
        assert c.config == {**r.base, **c.params}
        assert c.id == config_hash(c.config)
    assert len({c.id for c in cells}) == len(cells)
    # same request -> same ids (stable across runs); a different base value -> different ids
    assert [c.id for c in grid(resolve(Cfg, Preset(sweep={"seed": [0, 1, 2]}), None,
                                       ["lr=0.1,0.2", "flag=true,false"]))] == [c.id for c in cells]
    other = grid(resolve(Cfg, Preset(sweep={"seed": [0, 1, 2]}), ["steps=11"],
                         ["lr=0.1,0.2", "flag=true,false"]))
    assert not ({c.id for c in other} & {c.id for c in cells})


def test_grid_without_sweep_is_one_cell_and_duplicates_rejected():
    cells = grid(resolve(Cfg))
    assert len(cells) == 1 and cells[0].params == {} and cells[0].label() == "(single cell)"
    with pytest.raises(ValueError, match="duplicate"):
        grid(resolve(Cfg, None, None, ["seed=1,1"]))


def test_make_config_roundtrips_json():
    r = resolve(Cfg, None, ["shape=[4,5]", "widths=[1]", "cap=3"])
    cfg = make_config(Cfg, json.loads(canonical_json(r.base)))
    assert cfg.shape == (4, 5) and cfg.widths == [1] and cfg.cap == 3
    with pytest.raises(ValueError, match="valid keys"):
        make_config(Cfg, {"zzz": 1})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                      children, max_size=3),
    max_leaves=10)


@settings(max_examples=20, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_hash_ignores_key_order_and_tuples(d):
    rev = dict(reversed(list(d.items())))
    assert config_hash(d) == config_hash(rev)
    assert json.loads(canonical_json(d)) == json.loads(json.dumps(d))
    tup = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    assert config_hash(tup) == config_hash(d)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=4, unique=True),
       st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=3, unique=True),
       st.lists(st.booleans(), min_size=1, max_size=2, unique=True))
def test_grid_size_and_ids_for_any_sweep(seeds, lrs, flags):
    r = resolve(Cfg, None, None, {"seed": seeds, "lr": lrs, "flag": flags})
    cells = grid(r)
    assert len(cells) == len(seeds) * len(lrs) * len(flags)
    assert len({c.id for c in cells}) == len(cells)
    assert {(c.config["seed"], c.config["lr"], c.config["flag"]) for c in cells} == set(
        itertools.product(seeds, [float(x) for x in lrs], flags))
