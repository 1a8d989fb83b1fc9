import math

import torch

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler


def test_warmup_cosine_values_and_python_floats():
    s = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=110)
    assert s(0) == 0.0 and math.isclose(s(5), 0.5)
    assert math.isclose(s(60), 0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert math.isclose(s(500), 0.1)
    assert all(type(s(n)) is float for n in (0, 5, 60, 500))


def test_linear_cycles_and_checkpoint_holds_no_numpy(tmp_path):
    s = LambdaLinearScheduler(warm_up_steps=[10], f_min=[0.5], f_max=[1.0], f_start=[0.0], cycle_lengths=[100])
    assert math.isclose(s(5), 0.5) and math.isclose(s(10), 1.0 - 0.5 * 10 / 100)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=s.schedule)
    opt.step()
    sched.step()
    path = tmp_path / "state.pt"
    torch.save(
        {"opt": opt.state_dict(), "sched": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}}, path
    )
    torch.load(path, weights_only=True)  # numpy scalars in the state would be refused here
