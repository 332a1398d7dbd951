"""Training captions: AID class names in varied wording, and descriptions of map layouts.

Free-text prompts at run time go through the same sentence encoder, so varied templates and synonyms here
are what make "dense housing by a river" land near the right classes.
"""
from __future__ import annotations

import itertools
import random
from typing import Dict, List

import numpy as np

AID_SYNONYMS: Dict[str, List[str]] = {
    "Airport": ["an airport", "airport runways and terminals", "an airfield with runways"],
    "BareLand": ["bare land", "barren ground", "bare soil", "empty dirt land"],
    "BaseballField": ["a baseball field", "baseball diamonds", "a ballpark"],
    "Beach": ["a beach", "a sandy beach by the sea", "coastline with sand and waves"],
    "Bridge": ["a bridge over a river", "a bridge", "a road bridge across water"],
    "Center": ["a city centre", "downtown buildings", "an urban centre"],
    "Church": ["a church", "a cathedral in a town", "a church with surrounding streets"],
    "Commercial": ["a commercial area", "shops and offices", "a business district"],
    "DenseResidential": ["dense residential area", "densely packed houses", "dense housing",
                         "a crowded neighbourhood"],
    "Desert": ["a desert", "sand dunes", "arid desert land"],
    "Farmland": ["farmland", "agricultural fields", "crop fields", "cultivated farmland"],
    "Forest": ["a forest", "dense trees", "woodland", "a forest canopy"],
    "Industrial": ["an industrial area", "factories and warehouses", "an industrial zone"],
    "Meadow": ["a meadow", "grassland", "green pasture", "open grass fields"],
    "MediumResidential": ["medium density residential area", "suburban houses", "a residential neighbourhood"],
    "Mountain": ["mountains", "a mountainous area", "rocky mountain terrain"],
    "Park": ["a park", "an urban park with trees and paths", "green park land"],
    "Parking": ["a parking lot", "a car park full of cars", "parking lots"],
    "Playground": ["a playground", "a sports ground with a running track", "a school sports field"],
    "Pond": ["a pond", "a small lake", "ponds surrounded by land"],
    "Port": ["a port", "a harbour with ships", "docks and a marina"],
    "RailwayStation": ["a railway station", "a train station with tracks", "railway tracks and platforms"],
    "Resort": ["a resort", "a holiday resort with pools", "a hotel resort"],
    "River": ["a river", "a river flowing through land", "a winding river"],
    "School": ["a school", "a school campus", "school buildings and yards"],
    "SparseResidential": ["sparse residential area", "scattered houses", "rural houses with gardens"],
    "Square": ["a city square", "a public plaza", "an urban square"],
    "Stadium": ["a stadium", "a sports stadium", "an arena"],
    "StorageTanks": ["storage tanks", "oil storage tanks", "industrial tanks"],
    "Viaduct": ["a viaduct", "highway interchange", "elevated roads and overpasses"],
}

TEMPLATES = ["{}", "a satellite image of {}", "aerial view of {}", "overhead photo of {}",
             "{} seen from above", "remote sensing image of {}", "high resolution satellite photo of {}",
             "Google Earth image of {}"]

CLASS_PROMPT = {c: f"a satellite image of {s[0]}" for c, s in AID_SYNONYMS.items()}


def aid_captions(cls: str) -> List[str]:
    return [t.format(s) for s in AID_SYNONYMS[cls] for t in TEMPLATES]


URBAN = ["a dense city block", "urban streets", "a city neighbourhood", "buildings and streets"]
MAJOR = ["a highway", "a major road", "a freeway"]
GREEN = ["trees", "a park", "green vegetation"]
WATER = ["water", "a river", "a waterfront"]
FALLBACK = ["an urban area", "a town"]


def _join(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def layout_caption(fractions: np.ndarray, rng: random.Random) -> str:
    """A caption for a maps tile from its layout class fractions (background, road, major road, building,
    vegetation, water)."""
    bg, road, major, bld, veg, water = [float(f) for f in fractions]
    parts = []
    if bld > 0.15 or road > 0.15:
        parts.append(rng.choice(URBAN))
    if major > 0.05:
        parts.append(rng.choice(MAJOR))
    if veg > 0.2:
        parts.append(rng.choice(GREEN))
    if water > 0.2:
        parts.append(rng.choice(WATER))
    if not parts:
        parts.append(rng.choice(FALLBACK))
    return rng.choice(TEMPLATES).format(_join(parts))


def all_captions() -> List[str]:
    """Every caption the training may draw, for precomputing embeddings once."""
    caps = set()
    for c in AID_SYNONYMS:
        caps.update(aid_captions(c))
    groups = [URBAN + [None], MAJOR + [None], GREEN + [None], WATER + [None]]
    for combo in itertools.product(*groups):
        parts = [p for p in combo if p is not None]
        for text in ([_join(parts)] if parts else FALLBACK):
            caps.update(t.format(text) for t in TEMPLATES)
    return sorted(caps)
