"""Memory layers built by the tests: one helper instead of a copy per test file."""
from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer


def memory_layer_from_spec(spec: str, name: str, features) -> QgsVectorLayer:
    """features = [(wkt, {field: value})] added to a memory layer made from a provider spec."""
    lyr = QgsVectorLayer(spec, name, "memory")
    assert lyr.isValid(), spec
    feats = []
    for wkt, attrs in features:
        f = QgsFeature(lyr.fields())
        f.setGeometry(QgsGeometry.fromWkt(wkt))
        for k, v in attrs.items():
            f[k] = v
        feats.append(f)
    assert lyr.dataProvider().addFeatures(feats)[0]
    lyr.updateExtents()
    return lyr


def memory_layer(geom: str, crs: str, features, fields=(("building", "string"),), name: str = "layer"):
    """geom: Point/LineString/Polygon/Multi*; fields: (name, type) pairs."""
    spec = f"{geom}?crs={crs}" + "".join(f"&field={n}:{t}" for n, t in fields)
    return memory_layer_from_spec(spec, name, features)
