"""Test helper: a copy of a zip with its entries changed (hostile and broken model zips)."""
import zipfile


def rewrite_zip(src, dst, change):
    """A copy of zip `src` with change(name, data) -> [(name, data), ...] applied to every entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            for name, data in change(info.filename, zin.read(info)):
                zout.writestr(name, data)
    return dst
