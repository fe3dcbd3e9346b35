#!/usr/bin/env bash
# Prepares what bench/gpu_check.py needs on the device machine (Python 3.12, torch 2.11 cu130, no
# internet, no diffusers): the wheels the image lacks and the ComfyUI 0.33 archive, in the
# gitignored folder .gpu_check/ of this checkout, which the device call carries (docs/benchmarks.md,
# "GPU check"). Total must stay under the device tool's 64 MiB; the sizes are printed at the end.
#
#   bash bench/gpu_check_prepare.sh /path/to/ComfyUI-0.33.0.tar.gz
set -euo pipefail
archive=${1:?usage: bench/gpu_check_prepare.sh /path/to/ComfyUI-0.33.0.tar.gz}
cd "$(dirname "$0")/.."
dest=.gpu_check
mkdir -p "$dest/wheels"
# The image has torch, transformers, safetensors, einops, numpy, huggingface-hub, regex, zipp (KINDS.md).
# ComfyUI 0.33's own pins for kitchen and aimdo (model_management imports comfy_aimdo); torchsde for
# comfy.samplers; SageAttention 1.0.6 is the pure-Python (Triton) release, so one wheel serves any CUDA.
# Not carried: av (34 MiB; only ComfyUI's video types import it, which the check never reaches),
# alembic/SQLAlchemy/blake3/simpleeval (the server's, not comfy's modules).
wheels=(diffusers==0.42.1 importlib_metadata==10.2.0 comfy-kitchen==0.2.31 comfy-aimdo==0.4.13
        torchsde==0.2.6 trampoline==0.1.2 sageattention==1.0.6)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest/wheels" "${wheels[@]}"
# comfy-kitchen's wheel holds its ROCm kernels too (59 MB, imported only under a ROCm torch): left out,
# with their RECORD line, so the wheel fits the carry.
python3 - "$dest"/wheels/comfy_kitchen-*.whl <<'PY'
import sys, zipfile
path, drop = sys.argv[1], "comfy_kitchen/backends/hip/_C.abi3.so"
with zipfile.ZipFile(path) as src:
    entries = [(info, src.read(info)) for info in src.infolist() if info.filename != drop]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
    for info, data in entries:
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(True) if not line.startswith(drop.encode()))
        out.writestr(info.filename, data)
PY
cp "$archive" "$dest/ComfyUI-0.33.0.tar.gz"
du -ab "$dest" | sort -n | awk '{printf "%8.2f MiB  %s\n", $1 / 1048576, $2}'
