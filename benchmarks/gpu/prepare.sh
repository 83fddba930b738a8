#!/usr/bin/env bash
# Run on the development machine (it reaches PyPI) before a GPU session's device calls.
# Gathers what the lent GPU machine lacks into folders git ignores and the device tool carries:
#   .whl/  wheels for its Python 3.12, at the versions uv.lock pins
#   .gpu/  the default model's GGUF in two parts (one call carries at most 64 MiB) + its sha256
set -euo pipefail
cd "$(dirname "$0")/../.."

# Packages the device image does not have (see /work/.library/device/KINDS.md).
packages=(pydantic pydantic-core annotated-types typing-inspection typing-extensions structlog
  gguf pytest-asyncio)

pinned() { # the version uv.lock pins for package $1
  awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' uv.lock
}

rm -rf .whl .gpu
mkdir -p .whl .gpu
for name in "${packages[@]}"; do
  version=$(pinned "$name")
  [ -n "$version" ] || { echo "uv.lock pins no $name" >&2; exit 1; }
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$name==$version"
done

model=$(uv run --quiet python -c 'from inferno_models import default_model_path; print(default_model_path())')
split --bytes=47M --numeric-suffixes "$model" .gpu/smollm2.gguf.part-
(cd "$(dirname "$model")" && sha256sum "$(basename "$model")") >.gpu/smollm2.gguf.sha256
du -sh .whl .gpu/*
