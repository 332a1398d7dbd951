"""Outputs go only to a regular file path or a new one (issue 20, 6 and the `.png` case of 8): a FIFO, a link, a
device node or a name that promises another format is refused with a clear message before any work, and
nothing at that path is replaced."""
import os
import stat

import pytest

from rsgen_qgis.core.errors import OutputError
from rsgen_qgis.core.geo.geotiff import CogStream, check_writable, write_cog
from test_geotiff import make_grid, make_rgb


def test_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "out.tif"
    os.mkfifo(fifo)
    grid = make_grid(16)
    with pytest.raises(OutputError, match="not a regular file"):
        write_cog(str(fifo), make_rgb(grid), grid, {})
    with pytest.raises(OutputError, match="not a regular file"):
        CogStream(str(fifo), grid, {})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, nothing renamed over it


@pytest.mark.parametrize("target", ["file", "missing"])
def test_a_link_is_refused(tmp_path, target):
    real = tmp_path / "elsewhere" / "real.tif"
    real.parent.mkdir()
    if target == "file":
        real.write_bytes(b"the user's own file")
    link = tmp_path / "out.tif"
    os.symlink(real, link)
    grid = make_grid(16)
    with pytest.raises(OutputError, match="is a link"):
        write_cog(str(link), make_rgb(grid), grid, {})
    assert os.path.islink(link)
    assert (real.read_bytes() == b"the user's own file") if target == "file" else not real.exists()


def test_a_device_node_is_refused():
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    with pytest.raises(OutputError, match="not a regular file"):
        check_writable("/dev/null", geotiff=False)


@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out", "out.tif.png"])
def test_a_name_for_another_format_is_refused(tmp_path, name):
    with pytest.raises(OutputError, match=r"GeoTIFF.*\.tif"):
        check_writable(str(tmp_path / name))
    check_writable(str(tmp_path / "out.TIF"))
    check_writable(str(tmp_path / "out.tiff"))


def test_a_regular_file_is_replaced(tmp_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"old")
    grid = make_grid(16)
    write_cog(str(out), make_rgb(grid), grid, {})
    assert out.read_bytes()[:2] in (b"II", b"MM")


@pytest.mark.parametrize("kind", ["fifo", "link", "png"])
def test_cli_refuses_before_loading_the_model(tmp_path, capsys, monkeypatch, kind):
    from rsgen_qgis import cli
    from rsgen_qgis.core.engine import generate

    monkeypatch.setattr(generate, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / ("out.png" if kind == "png" else "out.tif")
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "link":
        os.symlink(tmp_path / "target.tif", out)
    rc = cli.main(["generate", "--extent", "0,0,320,320", "--crs", "EPSG:32633", "--gsd", "10", "--out", str(out),
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err
    assert not (tmp_path / "target.tif").exists() and not (kind == "png" and out.exists())
