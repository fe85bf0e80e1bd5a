#!/bin/sh
# Every command of docs/inspect.md, in order, printing what the guide shows; writes docs/curves.png
# and docs/inspect.png. Trains the two runs first unless they exist. Run from the repository root:
#   sh benchmarks/inspect_guide.sh 2>&1      (CHARLSTM="python -m charlstm" to use a source tree)
set -eu
CHARLSTM=${CHARLSTM:-charlstm}
PYTHON=${PYTHON:-python}
LSTM=${LSTM:-/tmp/insp_run}
GRU=${GRU:-/tmp/insp_gru}

show() { echo "\$ $*" >&2; "$@"; }  # on stderr, so it survives the > /dev/null below

[ -d "$LSTM/best" ] || show $CHARLSTM --threads 1 train --out "$LSTM" --hidden-size 256 --max-steps 1700
[ -d "$GRU/best" ] || show $CHARLSTM --threads 1 train --out "$GRU" --hidden-size 256 --cell gru --max-steps 900
show $CHARLSTM plot "$LSTM" "$GRU" -o docs/curves.png --x time
show $CHARLSTM --threads 1 inspect "$LSTM" --split val -o /tmp/inspect.html
show $PYTHON benchmarks/inspect_screenshot.py /tmp/inspect.html docs/inspect.png
show $CHARLSTM --threads 1 inspect "$GRU" --split val -o /tmp/inspect_gru.html
show $CHARLSTM --threads 1 sample "$LSTM" --length 1000 --seed 1 --novelty > /dev/null
show $CHARLSTM --threads 1 sample "$LSTM" --length 1000 --seed 1 --temperature 0 --novelty > /dev/null
show $CHARLSTM --threads 1 inspect "$LSTM" --sample 2000 --seed 1 -o /tmp/sample.html
echo "\$ python (section 8 of docs/inspect.md)" >&2
$PYTHON - "$LSTM" <<'EOF'
import sys

import charlstm
from charlstm.inspection import rank_units, validation_text

model = charlstm.load(sys.argv[1])
result = model.inspect(validation_text(model)[:5000])
print(f"{result.loss:.4f} nats/char, {result.bpc:.4f} bits/char")
layer = result.layers[1]  # dict of (T, hidden_size) numpy arrays
print(sorted(layer), layer["tanh_c"].shape)
best = next(u for u in rank_units(result) if u.feature == "inside quotes")
print(best)
EOF
