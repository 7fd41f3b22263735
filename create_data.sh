#!/usr/bin/env bash
# Build the OpenImages subset of the paper from official, stable sources, end to end.
#
# Usage: ./create_data.sh [options]
#
# What it downloads (official Open Images V6 locations; skipped when the file exists):
#   https://storage.googleapis.com/openimages/v6/oidv6-train-annotations-bbox.csv  2.1 GB (14.6M boxes)
#   https://storage.googleapis.com/openimages/v5/validation-annotations-bbox.csv     24 MB
#   https://storage.googleapis.com/openimages/v5/test-annotations-bbox.csv           74 MB
#   https://storage.googleapis.com/openimages/v5/class-descriptions-boxable.csv      12 KB
# then only the selected images from the public bucket
#   https://open-images-dataset.s3.amazonaws.com/{train,validation,test}/<id>.jpg
#   train subset: ~213k images (paper: 212,753 images, 208 classes, ~12 boxes/image), ~65 GB
#   test split (validation + test images with a kept class): up to ~167k images, ~50 GB
#
# Disk needed: ~2.2 GB of CSVs + ~1 GB of dicts + ~65 GB of train images, plus ~50 GB
# for the test images (skip them with --no-test). Memory: under 1.5 GB.
#
# Steps (each resumable; rerun the script after an interruption):
#   1. download the CSVs (curl -C -, atomic rename)          skip: --no-download-csv
#   2. python -m ssl_crops.datasets.openimages build          -> DATA/images_selected_new.npy,
#      images_selected_with_all_features.npy, index.npz, images_test*.npy, index_test.npz,
#      images_test.txt, classes.csv, build_report.json
#   3. python -m ssl_crops.datasets.openimages download       -> DATA/images/<id>.jpg
#      (parallel, retried, verified; failures in DATA/images/download_report*.json)
#
# Options:
#   --data DIR               output directory (default: data/openimages)
#   --csv-dir DIR            where the CSVs are or go (default: DATA/csv)
#   --train-csv PATH         train box CSV (default: CSV_DIR/oidv6-train-annotations-bbox.csv)
#   --val-csv PATH           validation box CSV (default: CSV_DIR/validation-annotations-bbox.csv)
#   --test-csv PATH          test box CSV (default: CSV_DIR/test-annotations-bbox.csv)
#   --classes-csv PATH       class descriptions (default: CSV_DIR/class-descriptions-boxable.csv)
#   --no-download-csv        never download CSVs; the files must exist
#   --no-test                no test split (no validation/test CSVs or images)
#   --no-images              build the dicts only
#   --workers N              parallel image downloads (default: 16)
#   --base-url URL           image bucket (default: https://open-images-dataset.s3.amazonaws.com)
#   --min-class-images N     keep classes with at least N images (default: 900)
#   --min-classes-per-image N  keep images with at least N distinct kept classes (default: 2)
#   --exclude-group-of       ignore IsGroupOf=1 boxes
#   --python PY              Python interpreter (default: python3)
#   -h, --help               this text
#
# Then pretrain with:  python main_moco.py DATA/images ...   (the dicts are found in DATA)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

DATA=data/openimages CSV_DIR="" TRAIN_CSV="" VAL_CSV="" TEST_CSV="" CLASSES_CSV=""
DOWNLOAD_CSV=1 TEST=1 IMAGES=1 WORKERS=16 BASE_URL="" PY=python3 RULES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --data) DATA=$2; shift ;;
    --csv-dir) CSV_DIR=$2; shift ;;
    --train-csv) TRAIN_CSV=$2; shift ;;
    --val-csv) VAL_CSV=$2; shift ;;
    --test-csv) TEST_CSV=$2; shift ;;
    --classes-csv) CLASSES_CSV=$2; shift ;;
    --no-download-csv) DOWNLOAD_CSV=0 ;;
    --no-test) TEST=0 ;;
    --no-images) IMAGES=0 ;;
    --workers) WORKERS=$2; shift ;;
    --base-url) BASE_URL=$2; shift ;;
    --min-class-images|--min-classes-per-image) RULES+=("$1" "$2"); shift ;;
    --exclude-group-of) RULES+=("$1") ;;
    --python) PY=$2; shift ;;
    *) echo "create_data.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

CSV_DIR=${CSV_DIR:-$DATA/csv}
TRAIN_CSV=${TRAIN_CSV:-$CSV_DIR/oidv6-train-annotations-bbox.csv}
VAL_CSV=${VAL_CSV:-$CSV_DIR/validation-annotations-bbox.csv}
TEST_CSV=${TEST_CSV:-$CSV_DIR/test-annotations-bbox.csv}
CLASSES_CSV=${CLASSES_CSV:-$CSV_DIR/class-descriptions-boxable.csv}
mkdir -p "$DATA" "$CSV_DIR"

need_gb=$(( IMAGES ? (TEST ? 120 : 70) : 4 ))
free_gb=$(( $(df -Pk "$DATA" | awk 'NR==2 {print $4}') / 1048576 ))
echo "== output: $DATA (free: ${free_gb} GB, needed: about ${need_gb} GB)"
(( free_gb >= need_gb )) || echo "warning: probably not enough disk space in $DATA" >&2

fetch() {  # fetch URL DEST: resumable, atomic download of an official CSV
  local url=$1 dest=$2
  if [[ -s $dest ]]; then echo "== have $dest"; return; fi
  if (( ! DOWNLOAD_CSV )); then echo "error: $dest not found (and --no-download-csv)" >&2; exit 1; fi
  echo "== downloading $url"
  if command -v curl >/dev/null; then
    curl -fL --retry 5 -C - -o "$dest.part" "$url"
  else
    wget -c -O "$dest.part" "$url"
  fi
  mv "$dest.part" "$dest"
}

GCS=https://storage.googleapis.com/openimages
fetch "$GCS/v6/oidv6-train-annotations-bbox.csv" "$TRAIN_CSV"
fetch "$GCS/v5/class-descriptions-boxable.csv" "$CLASSES_CSV"
TEST_ARGS=()
if (( TEST )); then
  fetch "$GCS/v5/validation-annotations-bbox.csv" "$VAL_CSV"
  fetch "$GCS/v5/test-annotations-bbox.csv" "$TEST_CSV"
  TEST_ARGS=(--test-boxes "validation=$VAL_CSV" "test=$TEST_CSV")
fi

echo "== building the subset dicts"
"$PY" -m ssl_crops.datasets.openimages build --boxes "$TRAIN_CSV" --classes "$CLASSES_CSV" \
  ${TEST_ARGS[@]+"${TEST_ARGS[@]}"} ${RULES[@]+"${RULES[@]}"} --out "$DATA"

(( IMAGES )) || { echo "== done (dicts only): $DATA"; exit 0; }
DL=(--out "$DATA/images" --workers "$WORKERS")
if [[ -n $BASE_URL ]]; then DL+=(--base-url "$BASE_URL"); fi
status=0
echo "== downloading the train images"
"$PY" -m ssl_crops.datasets.openimages download --ids "$DATA/images_selected_new.npy" "${DL[@]}" \
  --report "$DATA/images/download_report_train.json" || status=$?
if (( TEST )); then
  echo "== downloading the test images"
  "$PY" -m ssl_crops.datasets.openimages download --ids "$DATA/images_test.txt" "${DL[@]}" \
    --report "$DATA/images/download_report_test.json" || status=$?
fi
if (( status )); then
  echo "== some images failed (see $DATA/images/download_report_*.json); rerun to retry them" >&2
  exit "$status"
fi
echo "== done: $DATA (pretrain with: python main_moco.py $DATA/images ...)"
