import pytest

from vhred.config import Config, ConfigError, from_dict, load, validate


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("z_dim: 16\nlr: 1\n")
    cfg = load(str(f), ["z_dim=32", "tie_embeddings=false", "word_dropout=0.1"])
    assert cfg.z_dim == 32 and cfg.lr == 1.0 and cfg.tie_embeddings is False and cfg.word_dropout == 0.1
    assert cfg.name == "c-vhred"


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean z_dim"):
        load(None, ["z_dimm=3"])
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        from_dict({"batchsize": 3})


@pytest.mark.parametrize("override,message", [
    ("z_dim=abc", "expected int"), ("tie_embeddings=maybe", "expected true or false"),
    ("emb_dim=-4", "must be positive"), ("model=gpt", "vhred or hred"), ("z_dim", "key=value"),
    ("word_dropout=1.5", "below 1"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load(None, [override])


def test_wrong_type_in_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        load(str(f), [])


def test_warmup_longer_than_training_is_a_warning():
    assert validate(Config(max_steps=10, kl_warmup_steps=100))
    assert not validate(Config(max_steps=1000, kl_warmup_steps=100))
