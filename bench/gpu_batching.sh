#!/usr/bin/env bash
# The step-batcher benchmark on a CUDA device (fp16), for when a GPU is lent:
#   bash bench/gpu_batching.sh            (prints markdown tables)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
python3 bench/bench_batching.py --model sd15 --latent 64 --jobs 1 2 4 8 16 --steps 10 --repeats 1 \
  --device cuda --dtype float16
python3 bench/bench_batching.py --model bundled --jobs 1 2 4 8 16 --steps 20 --repeats 1 --device cuda
