from vhred.config import Config
from vhred.schedule import kl_weight, learning_rate


def test_linear_kl_warmup():
    cfg = Config(kl_schedule="linear", kl_warmup_steps=100, kl_max=1.0)
    assert kl_weight(0, cfg) == 0.0
    assert kl_weight(50, cfg) == 0.5
    assert kl_weight(100, cfg) == 1.0 and kl_weight(10_000, cfg) == 1.0


def test_cyclical_kl_restarts_each_cycle():
    cfg = Config(kl_schedule="cyclical", kl_warmup_steps=50, kl_cycle_steps=100, kl_max=0.8)
    assert [kl_weight(s, cfg) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.4, 0.8, 0.8, 0.0, 0.4]


def test_constant_kl_and_learning_rate_warmup():
    assert kl_weight(0, Config(kl_schedule="constant", kl_max=0.3)) == 0.3
    cfg = Config(lr=1e-3, lr_warmup_steps=10)
    assert learning_rate(0, cfg) == 1e-4 and learning_rate(9, cfg) == 1e-3 and learning_rate(500, cfg) == 1e-3
