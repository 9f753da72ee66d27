import argparse, json, sys
from pathlib import Path
import scripts.bench_accuracy_budget as bab
from scripts.bench_accuracy_budget import _load_run, _bench_cfg, attention_grounding
a = argparse.Namespace(eval_config="configs/eval/small.yaml", data="/tmp/smallb", smoke=False)
for run in sys.argv[1:]:
    try:
        model, processor, ds, dcfg = _load_run(Path(run), a, None, ["data.path=/tmp/smallb", "data.generate=false", "data.split=test"])
    except Exception as e:
        print(run, "load failed", e); raise
    for layer in (1, 2):
        g = attention_grounding(model, processor, ds, _bench_cfg(dcfg.path), layer)
        print(run.split('/')[-1], layer, json.dumps(g), flush=True)
