#!/usr/bin/env bash
# The demo: sets up .venv (once, with eSpeak NG from the espeakng-loader wheel), then makes a
# spoken corpus, trains, evaluates and transcribes on the CPU. Arguments go to `asr demo`
# (--work-dir DIR, --seed N, --quick, --no-lm, dotted.key=value overrides of configs/demo.yaml).
ASR_EXTRAS="dev,demo" source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
asr demo "$@"
