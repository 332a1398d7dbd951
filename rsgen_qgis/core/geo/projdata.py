"""Make pyproj find PROJ's data when run from a virtual environment.

Debian's pyproj looks for proj.db under sys.prefix/share/proj; inside a venv (even one made with
--system-site-packages) sys.prefix is the venv, so pyproj warns "Valid PROJ data directory not found" and
fails. Before pyproj is first imported we point PROJ_DATA at the system's copy, the one QGIS uses, so both
share one PROJ database. Inside QGIS (sys.prefix is /usr) nothing changes.
"""
import os
import sys

_CANDIDATES = (os.path.join(sys.prefix, "share", "proj"), os.path.join(sys.base_prefix, "share", "proj"),
               "/usr/share/proj", "/usr/local/share/proj")


def ensure_proj_data() -> None:
    if os.environ.get("PROJ_DATA") or os.environ.get("PROJ_LIB"):
        return
    for cand in _CANDIDATES:
        if os.path.exists(os.path.join(cand, "proj.db")):
            if cand != os.path.join(sys.prefix, "share", "proj"):
                os.environ["PROJ_DATA"] = cand
            return


ensure_proj_data()
