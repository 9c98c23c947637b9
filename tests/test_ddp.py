"""DistributedDataParallel with rnnfast.torch.RNN: 2 processes, gloo with a file store, equal to one process on the
combined batch (skipped without torch or torch.distributed)."""

from __future__ import annotations

import pathlib

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_ddp_two_processes_equal_single_process_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # The spawned processes import the example by name (spawn hands them this process's sys.path).
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import ddp_train

    config = dict(ddp_train.CONFIG, steps=6, batch=16, window=20, warmup=5, hidden=16)
    ranks = ddp_train.run_ddp(config, world_size=2)
    single = ddp_train.run_single(config)

    assert len(ranks) == 2
    for name, value in ranks[0]["state_dict"].items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(ranks[1]["state_dict"][name], value, rtol=0, atol=0)  # DDP keeps ranks equal
        torch.testing.assert_close(value, single["state_dict"][name], rtol=1e-9, atol=1e-12, msg=name)
    assert set(ranks[0]["state_dict"]) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
                                           "rnn.bias_hh_l0", "head.weight", "head.bias"}
    # The training moved the parameters and the losses (averaged over the ranks) are the single process's.
    initial = ddp_train.build_model(config).state_dict()
    assert ddp_train.max_difference(initial, single["state_dict"]) > 1e-3
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-9)
    assert single["losses"][-1] < single["losses"][0]
