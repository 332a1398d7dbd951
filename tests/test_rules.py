"""Layout rules without QGIS: matching, priorities, the default OSM rules file, and validation messages."""
import json
import os

import pytest

from rsgen_qgis.core.conditions.encoding import LAYOUT_CLASSES
from rsgen_qgis.core.errors import ParameterError
from rsgen_qgis.core.conditions.rules import (DEFAULT_OSM_RULES, DEFAULT_PRIORITY, Rule, best_rule, load_rules, match,
                                   rule_from_dict, rules_from_data, rules_to_json)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("attrs, geometry, expected", [
    ({"highway": "motorway"}, "line", "major_road"),
    ({"highway": "primary"}, "line", "major_road"),
    ({"highway": "residential"}, "line", "road"),
    ({"highway": "service"}, "line", "road"),
    ({"highway": "footway"}, "line", None),
    ({"highway": "residential"}, "polygon", None),  # road rules are for lines
    ({"building": "yes"}, "polygon", "building"),
    ({"building": "House "}, "polygon", "building"),  # case and spaces do not matter
    ({"building": "no"}, "polygon", None),
    ({"building": None}, "polygon", None),
    ({"building": ""}, "polygon", None),
    ({"landuse": "forest"}, "polygon", "vegetation"),
    ({"leisure": "park"}, "polygon", "vegetation"),
    ({"natural": "water"}, "polygon", "water"),
    ({"waterway": "riverbank"}, "polygon", "water"),
    ({"waterway": "weir"}, "line", "water"),
    ({"landuse": "forest", "building": "yes"}, "polygon", "building"),  # building outranks vegetation
    ({"leisure": "park", "natural": "water"}, "polygon", "water"),  # a pond in a park
    ({"landuse": "residential"}, "polygon", None),
])
def test_default_osm_matching(attrs, geometry, expected):
    assert match(attrs, geometry=geometry) == expected


def test_widths_by_road_class_and_later_rule_wins_a_tie():
    widths = {v: best_rule({"highway": v}, DEFAULT_OSM_RULES, "line")[1].buffer_m
              for v in ("motorway", "trunk", "primary", "secondary", "tertiary", "residential", "service")}
    assert 12 <= widths["primary"] <= widths["trunk"] <= widths["motorway"] <= 20
    assert all(5 <= widths[k] <= 10 for k in ("secondary", "tertiary", "residential", "service"))
    # the waterway wildcard (3 m) comes first, the specific river rule (same priority) later and wins
    assert best_rule({"waterway": "river"}, DEFAULT_OSM_RULES, "line")[1].buffer_m == 20
    assert best_rule({"waterway": "weir"}, DEFAULT_OSM_RULES, "line")[1].buffer_m == 3


def test_priorities_order_and_field_agnostic_layer_rules():
    order = sorted(LAYOUT_CLASSES, key=DEFAULT_PRIORITY.get)
    assert order == ["background", "vegetation", "water", "road", "major_road", "building"]
    rules = [Rule("building", None, geometry="polygon", priority=50, layer="Houses"),
             Rule("water", "kind", ("1", 2.0), priority=60)]
    assert match({}, rules, "polygon", "houses") == "building"
    assert match({}, rules, "polygon", "other") is None
    assert match({"kind": 1.0}, rules, "polygon", "other") == "water"  # 1.0, 1 and "1" are equal
    assert match({"kind": 2}, rules, "polygon", "houses") == "water"  # higher priority wins


def test_resource_file_equals_defaults_and_round_trips(tmp_path):
    assert tuple(load_rules(os.path.join(ROOT, "resources", "osm_rules.json"))) == DEFAULT_OSM_RULES
    path = tmp_path / "r.json"
    path.write_text(rules_to_json(DEFAULT_OSM_RULES[:3], "mine"))
    assert tuple(load_rules(str(path))) == DEFAULT_OSM_RULES[:3]
    path.write_text(json.dumps([{"class": "road", "field": "fclass", "values": "residential"}]))
    (rule,) = load_rules(str(path))
    assert rule.values == ("residential",) and rule.priority == DEFAULT_PRIORITY["road"] and not rule.optional


@pytest.mark.parametrize("rule, message", [
    ({"class": "roads", "field": "x"}, r"rule 2: key 'class': 'roads' is not a layout class"),
    ({"field": "x"}, r"rule 2: key 'class' is missing"),
    ({"class": "road"}, r"rule 2: key 'field' is missing"),
    ({"class": "road", "field": ""}, r"rule 2: key 'field' must be"),
    ({"class": "road", "field": "x", "values": []}, r"rule 2: key 'values' is empty"),
    ({"class": "road", "field": "x", "values": [True]}, r"rule 2: key 'values' must be a list"),
    ({"class": "road", "field": "x", "geometry": "lines"}, r"rule 2: key 'geometry': 'lines' is not one of"),
    ({"class": "road", "field": "x", "buffer_m": -1}, r"rule 2: key 'buffer_m' must be a width"),
    ({"class": "road", "field": "x", "buffer_m": "5"}, r"rule 2: key 'buffer_m'"),
    ({"class": "road", "field": "x", "priority": 1.5}, r"rule 2: key 'priority' must be a whole number"),
    ({"class": "road", "field": "x", "optional": "yes"}, r"rule 2: key 'optional' must be true or false"),
    ({"class": "road", "field": "x", "width": 3}, r"rule 2: unknown key 'width'"),
    ("road", r"rule 2: each rule must be an object"),
])
def test_validation_names_rule_and_key(rule, message):
    with pytest.raises(ParameterError, match=message):
        rules_from_data([{"class": "water", "field": "natural"}, rule], "my.json")


def test_file_level_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"rules": [ {"class": "road", ]}')
    with pytest.raises(ParameterError, match=r"bad.json is not valid JSON: .* line 1, column"):
        load_rules(str(path))
    with pytest.raises(ParameterError, match="cannot be read"):
        load_rules(str(tmp_path / "missing.json"))
    with pytest.raises(ParameterError, match="list of rules is empty"):
        rules_from_data({"rules": []})
    with pytest.raises(ParameterError, match="unknown top-level key 'rule'"):
        rules_from_data({"rule": []})
    assert rule_from_dict({"class": "building", "field": None}, 0).field is None
