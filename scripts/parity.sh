#!/usr/bin/env bash
# Learning parity with PyTorch's nn.LSTM (issue 18): val loss at steps 100, 300 (and 1,000 in the
# long cells) over lr × hidden × dropout × seeds on 红楼梦 and Shakespeare, charlab beside
# PyTorch, one table naming the processor. Flags go to scripts/parity.py (--seeds, --steps,
# --lrs, --hiddens, --dropouts, --corpora, --jobs, --json, and --bf16: charlab bf16
# against charlab fp32 with PyTorch autocast beside them; --no-torch leaves PyTorch out;
# --precision bf16 without --bf16: charlab bf16 against PyTorch fp32, for issue 27's time to
# quality). Not part of CI; about 40 minutes on 2 cores with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/torch-venv.sh
exec .venv-torch/bin/python scripts/parity.py "$@"
