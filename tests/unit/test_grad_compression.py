"""``train.grad_compression``: the gradients two real ranks step with, under each engine's own launcher
(horovodrun with Gloo, torchrun with Gloo), against both ranks' local gradients computed in fp32."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

RANK_SCRIPT = Path(__file__).resolve().parents[1] / "compression_rank.py"
BIN = Path(sys.executable).parent


def _launch(engine: str, compression: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{engine}-{compression}.json"
    if engine == "horovod":
        pytest.importorskip("horovod.torch")
        command = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]
    else:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    program = [sys.executable, str(RANK_SCRIPT)] if engine == "horovod" else [str(RANK_SCRIPT)]
    run = subprocess.run([*command, *program, engine, compression, str(out)], env=env, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    return json.loads(out.read_text())


@pytest.mark.parametrize("engine", ["horovod", "torch"])
def test_fp16_compression_averages_in_fp16_and_none_in_fp32(engine, tmp_path):
    exact = _launch(engine, "none", tmp_path)
    compressed = _launch(engine, "fp16", tmp_path)
    assert exact["size"] == compressed["size"] == 2
    local = np.asarray(exact["local"], dtype=np.float64)
    assert np.array_equal(local, np.asarray(compressed["local"]))
    mean = local.mean(axis=0)
    plain = np.asarray(exact["averaged"], dtype=np.float32)
    fp16 = np.asarray(compressed["averaged"], dtype=np.float32)

    def representable(values):  # what an fp16 allreduce hands back, cast to fp32
        return values.astype(np.float16).astype(np.float32) == values

    # none: the fp32 average, which fp16 cannot hold for most values
    np.testing.assert_allclose(plain, mean, rtol=1e-6, atol=1e-7)
    assert representable(plain).mean() < 0.2
    # fp16: every value came through fp16, within its rounding of the same average: each rank's gradient
    # rounded to fp16 (half an ulp, 2**-11 relative), then the sum and the division by 2 each rounded again
    assert representable(fp16).all()
    bound = 2.0 ** -10 * (np.abs(local).max(axis=0) + np.abs(mean)) + 6e-8
    assert (np.abs(fp16 - mean) <= bound).all(), float((np.abs(fp16 - mean) / bound).max())
    assert not np.array_equal(fp16, plain)


def test_an_unknown_compression_is_refused_naming_it():
    import torch

    from classeg.training.collectives import LocalCollectives

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"train.grad_compression must be one of \('none', 'fp16'\), got 'bf16'"):
        LocalCollectives().wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), accum_steps=1,
                                device=torch.device("cpu"), compression="bf16")
