# Run on the OLD tree (git archive f610a2f), with Triton 3.6.0 on PYTHONPATH and TRITON_INTERPRET=0:
#   python calibrate_old.py OUT.json   -> the static figures in tools/calibration.py
"""Static figures of the OLD state kernel (completion ticket, radix with global histograms) at the
shapes the H200 probe measured, for the report's calibration."""
import json, math, os, sys, importlib
os.environ["TRITON_ALWAYS_COMPILE"] = "1"
import torch, triton
from camdrop_kernels.triton_backend import report as R, compile_check as cc
from camdrop_kernels.triton_backend.sass import Sass, source_regions
sk = importlib.import_module("camdrop_kernels.triton_backend.state_kernel")
loops, cold = source_regions(sk.__file__)
out = []
cases = [("bench", (64, 256, 56, 56), {}), ("bench top_pixels=1", (64, 256, 56, 56), dict(top_pixels=1)),
         ("bench top_channels=1", (64, 256, 56, 56), dict(top_channels=1)),
         ("bench both 1", (64, 256, 56, 56), dict(top_pixels=1, top_channels=1)),
         ("(128,1024,14,14)", (128, 1024, 14, 14), {}), ("(128,2048,7,7)", (128, 2048, 7, 7), {})]
import camdrop_kernels.triton_backend as tb
tb.SMS_OVERRIDE = 132
for name, shape, kw in cases:
    plans = cc.plans_for(shape, x_dtype=torch.bfloat16, cam_dtype=torch.float32, **kw)
    plan, args = plans["state"]
    k = cc.compile_plan(plan, args)
    s = Sass(k.asm["cubin"])
    est = R._state_estimate(plan, s, loops, cold, shape, torch.bfloat16, kw)
    ops = {}
    for ins in s.instrs: ops[ins.base] = ops.get(ins.base, 0) + 1
    out.append(dict(case=name, shape=shape, kw=kw, regs=s.resources["reg"], programs=math.prod(plan.grid),
                    programs_per_sm=est["programs_per_sm"], instructions_per_warp=est["instructions_per_warp"],
                    round_trip_clocks=est["clocks"]["round_trips"], l2_atomics=est["l2_atomics"],
                    static_bar=ops.get("BAR", 0), triton=triton.__version__))
    print(out[-1], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
