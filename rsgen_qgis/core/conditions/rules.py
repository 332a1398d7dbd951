"""Attribute rules that turn map features into layout classes (no QGIS: the batch runner and tests use it too).

A rule says "features whose `field` has one of `values` (and the right geometry) are class `class`", and how
wide a line or point is on the ground (`buffer_m`, the full width in metres: a 10 m road covers 5 m either side
of its centre line). Where features of several rules overlap, the higher `priority` wins; on equal priority the
later rule wins, so a file can put a wildcard rule first and specific ones after it.

Default priorities put small, sharp things over large areas: vegetation < water < road < major_road < building.
Water above vegetation because ponds and rivers sit inside park and forest polygons; roads above water because
bridges cross rivers; buildings last because their outlines are the most precise thing on a map.

`optional` rules may name a field a layer does not have (the OSM defaults: a roads layer has no `building`
field); a rule that is not optional and names a field missing from a layer it applies to is a user mistake
(a typo in a rules file) and raises ConditionError naming the layer and the field. A rule whose `field` is null
is field-agnostic: it matches every feature of its geometry (e.g. "every polygon of layer 'houses' is a building").
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .encoding import LAYOUT_CLASSES
from ..errors import ParameterError

GEOMETRIES = ("line", "polygon", "point", "any")
DEFAULT_PRIORITY = {"background": 0, "vegetation": 10, "water": 20, "road": 30, "major_road": 40, "building": 50}
# Legend colours (RGB) of the layout classes, for previews; 255 (no information) is drawn transparent.
LAYOUT_COLOURS = {"background": (224, 219, 208), "road": (128, 128, 128), "major_road": (245, 160, 40),
                  "building": (190, 60, 50), "vegetation": (110, 175, 80), "water": (70, 130, 220)}
MAX_BUFFER_M = 1000.0
_KEYS = ("class", "field", "values", "geometry", "buffer_m", "priority", "exclude", "layer", "optional")
_FILE_KEYS = ("rules", "description", "version")


def _norm(value: Any) -> Optional[str]:
    """Attribute value -> comparable text: None/'' are 'no value'; 1, 1.0 and '1' compare equal; case-blind."""
    if value is None:
        return None
    if isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    text = str(value).strip().lower()
    return text or None


@dataclass(frozen=True)
class Rule:
    """One attribute rule; `cls` is the JSON key "class". See the module docstring for the semantics."""

    cls: str
    field: Optional[str]
    values: Tuple[str, ...] = ("*",)
    geometry: str = "any"
    buffer_m: float = 0.0
    priority: int = 0
    exclude: Tuple[str, ...] = ()
    layer: Optional[str] = None
    optional: bool = False
    _values: frozenset = dc_field(default=frozenset(), init=False, repr=False, compare=False)
    _exclude: frozenset = dc_field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_values", frozenset(_norm(v) for v in self.values))
        object.__setattr__(self, "_exclude", frozenset(_norm(v) for v in self.exclude))

    @property
    def class_id(self) -> int:
        return LAYOUT_CLASSES.index(self.cls)

    def applies_to(self, geometry: str = "any", layer: Optional[str] = None) -> bool:
        """Whether this rule looks at features of this geometry kind from this layer (name, case-blind)."""
        if self.layer is not None and layer is not None and self.layer.lower() != layer.lower():
            return False
        return self.geometry == "any" or geometry == "any" or self.geometry == geometry

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        if not self.field:
            return True
        value = _norm(attrs.get(self.field))
        if value is None or value in self._exclude:
            return False
        return "*" in self._values or value in self._values

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"class": self.cls, "field": self.field, "values": list(self.values),
                             "geometry": self.geometry, "buffer_m": self.buffer_m, "priority": self.priority}
        if self.exclude:
            d["exclude"] = list(self.exclude)
        if self.layer is not None:
            d["layer"] = self.layer
        if self.optional:
            d["optional"] = True
        return d


def best_rule(attrs: Mapping[str, Any], rules: Sequence[Rule], geometry: str = "any",
              layer: Optional[str] = None) -> Optional[Tuple[int, Rule]]:
    """(index, rule) of the winning rule for one feature: highest priority, then the later rule; None if none."""
    best: Optional[Tuple[int, Rule]] = None
    for i, rule in enumerate(rules):
        if rule.applies_to(geometry, layer) and rule.matches(attrs):
            if best is None or rule.priority >= best[1].priority:
                best = (i, rule)
    return best


def match(attrs: Mapping[str, Any], rules: Optional[Sequence[Rule]] = None, geometry: str = "any",
          layer: Optional[str] = None) -> Optional[str]:
    """Layout class name of a feature (attribute dict), or None when no rule matches it."""
    hit = best_rule(attrs, DEFAULT_OSM_RULES if rules is None else rules, geometry, layer)
    return hit[1].cls if hit else None


def _fail(where: str, msg: str) -> ParameterError:
    return ParameterError(f"{where}: {msg}")


def rule_from_dict(d: Any, index: int, source: str = "rules") -> Rule:
    """Validate one rule object; errors name the source, the rule's 1-based number and the key at fault."""
    where = f"{source}, rule {index + 1}"
    if not isinstance(d, dict):
        raise _fail(where, f"each rule must be an object with keys {', '.join(_KEYS[:6])}; got {d!r:.60}.")
    unknown = sorted(set(d) - set(_KEYS))
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r}; rule keys are: {', '.join(_KEYS)}.")
    if "class" not in d:
        raise _fail(where, f"key 'class' is missing; it must be one of: {', '.join(LAYOUT_CLASSES)}.")
    cls = d["class"]
    if cls not in LAYOUT_CLASSES:
        raise _fail(where, f"key 'class': {cls!r} is not a layout class; choose one of: "
                           f"{', '.join(LAYOUT_CLASSES)}.")
    if "field" not in d:
        raise _fail(where, "key 'field' is missing; give an attribute name, or null to match every feature.")
    fld = d["field"]
    if fld is not None and (not isinstance(fld, str) or not fld.strip()):
        raise _fail(where, f"key 'field' must be an attribute name or null (got {fld!r}).")
    lists = {}
    for key, default in (("values", ["*"]), ("exclude", [])):
        v = d.get(key, default)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                              for x in v):
            raise _fail(where, f"key {key!r} must be a list of texts or numbers (got {v!r:.60}).")
        lists[key] = tuple(str(x) if isinstance(x, str) else x for x in v)
    if not lists["values"]:
        raise _fail(where, "key 'values' is empty; list the values to match, or [\"*\"] for any value.")
    geometry = d.get("geometry", "any")
    if geometry not in GEOMETRIES:
        raise _fail(where, f"key 'geometry': {geometry!r} is not one of {', '.join(GEOMETRIES)}.")
    buffer_m = d.get("buffer_m", 0.0)
    if isinstance(buffer_m, bool) or not isinstance(buffer_m, (int, float)) or not 0 <= buffer_m <= MAX_BUFFER_M:
        raise _fail(where, f"key 'buffer_m' must be a width in metres from 0 to {MAX_BUFFER_M:g} "
                           f"(got {buffer_m!r}).")
    priority = d.get("priority", DEFAULT_PRIORITY[cls])
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise _fail(where, f"key 'priority' must be a whole number (got {priority!r}).")
    layer = d.get("layer")
    if layer is not None and (not isinstance(layer, str) or not layer.strip()):
        raise _fail(where, f"key 'layer' must be a layer name or absent (got {layer!r}).")
    optional = d.get("optional", False)
    if not isinstance(optional, bool):
        raise _fail(where, f"key 'optional' must be true or false (got {optional!r}).")
    return Rule(cls, fld.strip() if fld else None, lists["values"], geometry, float(buffer_m), priority,
                lists["exclude"], layer, optional)


def rules_from_data(data: Any, source: str = "rules") -> List[Rule]:
    """A list of rule objects, or {"rules": [...], "description": "..."} as resources/osm_rules.json is."""
    if isinstance(data, dict):
        unknown = sorted(set(data) - set(_FILE_KEYS))
        if unknown:
            raise ParameterError(f"{source}: unknown top-level key {unknown[0]!r}; expected "
                                 f"{{\"rules\": [...]}} or a plain list of rules.")
        data = data.get("rules")
    if not isinstance(data, list):
        raise ParameterError(f"{source}: expected a list of rules (or an object with a \"rules\" list).")
    if not data:
        raise ParameterError(f"{source}: the list of rules is empty; nothing could be drawn.")
    return [rule_from_dict(d, i, source) for i, d in enumerate(data)]


def load_rules(path: str) -> List[Rule]:
    """Read and validate a rules JSON file; every mistake is a ParameterError naming the file and rule."""
    name = f"Rules file {path}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ParameterError(f"{name} cannot be read: {err.strerror or err}.") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ParameterError(f"{name} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}.") \
            from err
    return rules_from_data(data, name)


def rules_to_json(rules: Iterable[Rule], description: Optional[str] = None) -> str:
    """The file form load_rules reads back (one rule a line, so a diff of two files stays readable)."""
    head = "{\n"
    if description:
        head += f'  "description": {json.dumps(description)},\n'
    body = ",\n".join("    " + json.dumps(r.to_dict()) for r in rules)
    return head + '  "rules": [\n' + body + "\n  ]\n}\n"


def _osm(cls: str, fld: str, values: Sequence[str], geometry: str, buffer_m: float = 0.0, **kw) -> Rule:
    return Rule(cls, fld, tuple(values), geometry, buffer_m, DEFAULT_PRIORITY[cls], optional=True, **kw)


# OSM tagging (as QuickOSM or ogr2ogr exports give it: one field per key). Widths are typical carriageway
# widths seen from above; the wildcard waterway line comes before the specific ones, which win over it.
DEFAULT_OSM_RULES: Tuple[Rule, ...] = (
    _osm("vegetation", "landuse", ["forest", "grass", "meadow", "orchard", "vineyard", "recreation_ground",
                                   "village_green", "allotments", "cemetery", "greenfield", "plant_nursery"],
         "polygon"),
    _osm("vegetation", "leisure", ["park", "garden", "golf_course", "nature_reserve", "common", "dog_park"],
         "polygon"),
    _osm("vegetation", "natural", ["wood", "scrub", "grassland", "heath", "wetland", "fell"], "polygon"),
    _osm("water", "natural", ["water", "bay"], "polygon"),
    _osm("water", "landuse", ["reservoir", "basin"], "polygon"),
    _osm("water", "waterway", ["*"], "polygon"),
    _osm("water", "waterway", ["*"], "line", 3.0),
    _osm("water", "waterway", ["ditch", "drain"], "line", 2.0),
    _osm("water", "waterway", ["stream"], "line", 4.0),
    _osm("water", "waterway", ["canal"], "line", 12.0),
    _osm("water", "waterway", ["river"], "line", 20.0),
    _osm("road", "highway", ["service", "living_street", "pedestrian"], "line", 5.0),
    _osm("road", "highway", ["residential", "unclassified", "road"], "line", 6.0),
    _osm("road", "highway", ["tertiary", "tertiary_link", "secondary_link"], "line", 8.0),
    _osm("road", "highway", ["secondary"], "line", 10.0),
    _osm("major_road", "highway", ["motorway_link", "trunk_link", "primary_link", "primary"], "line", 12.0),
    _osm("major_road", "highway", ["trunk"], "line", 16.0),
    _osm("major_road", "highway", ["motorway"], "line", 20.0),
    _osm("building", "building", ["*"], "polygon", exclude=("no",)),
)

DEFAULT_RULES_DESCRIPTION = ("rsgen layout rules for OpenStreetMap tags (one field per key). Copy, edit and "
                             "pick this file as the rules file. Keys: class, field (null = every feature), values "
                             "([\"*\"] = any), geometry (line|polygon|point|any), buffer_m (full width of lines "
                             "and points in metres), priority (higher wins; on a tie the later rule), exclude, "
                             "layer (restrict to a layer name), optional (skip silently where the field is "
                             "missing).")
