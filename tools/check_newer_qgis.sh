#!/bin/sh
# Run the plugin's tests and a qgis_process generation on a newer QGIS than Debian 12's: Debian sid's (QGIS
# 3.44 LTR on Python 3.14 and numpy 2 on 2026-12-02), in a chroot. Needs root, ~3 GB of disk and Debian's
# package mirror; not part of `make test` or CI.
#
#   sudo sh tools/check_newer_qgis.sh [ROOTFS]        (default /var/tmp/rsgen-sid)
#
# What the chroot lacks (torch, dask, pycocotools: nothing the plugin needs in QGIS) makes the tests that use
# them fail or skip; the tiny test model is built here first and lent to the chroot (RSGEN_TINY_MODEL_DIR).
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOTFS=${1:-/var/tmp/rsgen-sid}
PY="$REPO/.venv/bin/python"
if [ ! -x "$ROOTFS/usr/bin/qgis_process.bin" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  [ -d "$ROOTFS/usr" ] || debootstrap --variant=minbase --include=ca-certificates sid "$ROOTFS" http://deb.debian.org/debian
  echo 'Acquire::Check-Valid-Until "false";' > "$ROOTFS/etc/apt/apt.conf.d/99novalid"
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  chroot "$ROOTFS" apt-get update -q
  DEBIAN_FRONTEND=noninteractive chroot "$ROOTFS" apt-get install -y -q --no-install-recommends qgis python3-qgis \
    qgis-providers python3-rasterio python3-pyproj python3-venv python3-pip python3-numpy python3-yaml python3-tqdm \
    python3-pytest python3-pytestqt python3-onnxruntime python3-pil xvfb xauth
fi
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
rm -rf "$ROOTFS/root/rsgen" "$ROOTFS/root/tiny" "$ROOTFS/root/wheels"
git -C "$REPO" clone -q "$REPO" "$ROOTFS/root/rsgen"
"$PY" -c "from rsgen_qgis.training.export import build_tiny_package as b; b('$ROOTFS/root/tiny/rsgen-tiny')" >/dev/null 2>&1
"$PY" -m pip download -q --no-deps -d "$ROOTFS/root/wheels" pytest-qgis==5.0.2
cat > "$ROOTFS/root/run.sh" <<'INNER'
set -u
cd /root/rsgen
[ -x /root/venv/bin/python ] || python3 -m venv --system-site-packages /root/venv
/root/venv/bin/pip install -q --no-deps /root/wheels/*.whl
python3 -c "import qgis.core, numpy, onnxruntime, rasterio, sys; print('QGIS', qgis.core.Qgis.QGIS_VERSION, '| Python', sys.version.split()[0], '| numpy', numpy.__version__, '| onnxruntime', onnxruntime.__version__, '| rasterio', rasterio.__version__)"
export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 RSGEN_TINY_MODEL_DIR=/root/tiny QGIS_CUSTOM_CONFIG_PATH=$(mktemp -d)
/root/venv/bin/python -m pytest -q -p no:warnings -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | grep -v "Schema error\|already registered" | tail -30
export QGIS_PLUGINPATH=/root/rsgen
/usr/bin/qgis_process.bin plugins enable rsgen_qgis >/dev/null 2>&1
mkdir -p out
/usr/bin/qgis_process.bin run rsgen:generate -- EXTENT="453000,454600,6233600,6235200 [EPSG:32734]" GSD=8 \
  PROMPT="farmland with a river" SEED=7 OUTPUT=/root/rsgen/out/newer.tif 2>&1 | grep "^Wrote"
INNER
chroot "$ROOTFS" sh /root/run.sh
echo "output: $ROOTFS/root/rsgen/out/newer.tif"
