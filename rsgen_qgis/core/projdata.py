"""Make pyproj find PROJ's data when run from a virtual environment.

Debian's pyproj looks for proj.db under sys.prefix/share/proj; inside a venv (even one made with
--system-site-packages) sys.prefix is the venv, so pyproj fails with "Valid PROJ data directory not found".
We point it at the system's copy, the one QGIS uses, so both share one PROJ database.
"""
import os
import sys

_CANDIDATES = ("/usr/share/proj", os.path.join(sys.base_prefix, "share", "proj"), "/usr/local/share/proj")


def ensure_proj_data() -> None:
    import pyproj.datadir

    try:
        pyproj.datadir.get_data_dir()
        return
    except Exception:  # pyproj.exceptions.DataDirError
        pass
    for cand in _CANDIDATES:
        if os.path.exists(os.path.join(cand, "proj.db")):
            pyproj.datadir.set_data_dir(cand)
            return


ensure_proj_data()
