import pytest

from vhred.config import Config, ConfigError, ModelConfig, from_dict, load, warnings


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("z_dim: 16\nlr: 1\n")
    cfg = load(str(f), ["z_dim=32", "tie_embeddings=false", "word_dropout=0.1"])
    assert cfg.arch.z_dim == 32 and cfg.lr == 1.0 and cfg.arch.tie_embeddings is False and cfg.arch.word_dropout == 0.1
    assert cfg.name == "c-vhred"


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean z_dim"):
        load(None, ["z_dimm=3"])
    with pytest.raises(ConfigError, match="did you mean batch_size"):
        from_dict({"batchsize": 3})
    for given, meant in (("Z_DIM", "z_dim"), ("LR", "lr"), ("arch.zdim", "z_dim")):   # any case, either form
        with pytest.raises(ConfigError, match=f"unknown config key '{given}' \\(did you mean {meant}\\?\\)"):
            load(None, [f"{given}=8"])
    with pytest.raises(ConfigError, match="'arch' is the section of model settings: give one of them, as arch.z_dim=8"):
        load(None, ["arch=foo"])


@pytest.mark.parametrize("text,where", [
    ("z_dim:\t8\n", r"found character '\\t' that cannot start any token \(line 1, column 7\)"),
    ("lr: 0.001\n  z_dim: 8\n", r"mapping values are not allowed here \(line 2, column 8\)"),
    ("name: [a\n", r"expected ',' or '\]', but got '<stream end>' \(line 2, column 1\)"),
])
def test_invalid_yaml_says_what_is_wrong_and_where(tmp_path, text, where):
    """PyYAML's first line ("while scanning for the next token") names neither the fault nor its line."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"c.yaml is not valid YAML: {where}$"):
        load(str(f), [])


@pytest.mark.parametrize("override,message", [
    ("z_dim=abc", "expected int"), ("tie_embeddings=maybe", "expected true or false"),
    ("emb_dim=-4", "must be positive"), ("model=gpt", "model must be vhred, hred"), ("z_dim", "key=value"),
    ("word_dropout=1.5", "below 1"), ("z_dim=-5", "z_dim must not be negative"),
    ("name=a\nb", "name must be a plain folder name"), ("name= ", "no spaces at its ends"), ("name=run ", "no spaces at its ends"), ("name=a\tb", "no control characters"), ("wh_reply_weight=0", "must be positive"), ("wh_reply_weight=101", "at most 100"),
    ("data_dir=", r"data_dir is empty; leave it out for the default \(data\)"),   # '' is the current folder
    ("out_dir= ", r"out_dir is empty; leave it out for the default \(runs\)"), ("data=", "data is empty"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load(None, [override])


def test_an_empty_config_path_is_refused_not_read_as_the_defaults():
    with pytest.raises(ConfigError, match="--config is empty; give a config file"):
        load("", [])


def test_wrong_type_in_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        load(str(f), [])


def test_a_float_in_yaml_without_a_dot_is_a_float(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; as an override it is a float, and so in a file."""
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\nweight_decay: 5E-2\n")
    cfg = load(str(f), [])
    assert (cfg.lr, cfg.weight_decay) == (0.001, 0.05) and load(None, ["lr=1e-3"]).lr == 0.001
    f.write_text("lr: e-3\n")
    with pytest.raises(ConfigError, match="lr: expected float"):
        load(str(f), [])


def test_warmup_longer_than_training_is_a_warning():
    """Steps 0 .. total - 1 are taken, and beta is kl_max from step kl_warmup_steps on: a warm-up
    as long as the run never gets there, with either annealing schedule."""
    from vhred.schedule import kl_weight, learning_rate
    for schedule in ("linear", "cyclical"):
        assert warnings(Config(kl_schedule=schedule, kl_warmup_steps=100, lr_warmup_steps=0), total_steps=10)
        assert not warnings(Config(kl_schedule=schedule, kl_warmup_steps=100), total_steps=1000)
        cfg = Config(kl_schedule=schedule, kl_warmup_steps=58, lr_warmup_steps=0)
        assert max(kl_weight(t, cfg) for t in range(58)) < cfg.kl_max and warnings(cfg, total_steps=58)
        assert max(kl_weight(t, cfg) for t in range(59)) == cfg.kl_max and not warnings(cfg, total_steps=59)
    assert not warnings(Config(kl_schedule="constant", kl_warmup_steps=100, lr_warmup_steps=0), total_steps=10)
    assert not warnings(Config(kl_warmup_steps=100, lr_warmup_steps=0, arch=ModelConfig(model="hred")), total_steps=10)
    # DialogWAE's latent has no KL term for beta to weigh (its loss holds no "kl")
    assert not warnings(Config(kl_warmup_steps=100, lr_warmup_steps=0, arch=ModelConfig(model="dialogwae")), total_steps=10)
    cfg = Config(lr_warmup_steps=50, kl_warmup_steps=0)
    assert max(learning_rate(t, cfg) for t in range(49)) < cfg.lr and warnings(cfg, total_steps=49) == [
        "lr_warmup_steps=50 is longer than the whole run (49 steps): the learning rate never reaches lr"]
    assert max(learning_rate(t, cfg) for t in range(50)) == cfg.lr and not warnings(cfg, total_steps=50)


def test_integers_in_yaml_are_read_in_base_10(tmp_path):
    """YAML 1.1 (PyYAML) reads 010 as 8, 0b11 as 3 and 1:30 as 90; an override of the same text
    means 10 or is refused, so the file refuses them too."""
    f = tmp_path / "c.yaml"
    for text in ("epochs: 010", "max_steps: 0b11", "max_steps: 1:30", "save_every: 0x10"):
        f.write_text(text + "\n")
        with pytest.raises(ConfigError, match="line 1: YAML reads .* in another base .*write the number plainly"):
            load(str(f), [])
    f.write_text("epochs: 10\nseed: 0\nmax_steps: -0\n")
    assert (load(str(f), []).epochs, load(str(f), []).seed) == (10, 0)
    f.write_text("lr: 1:30.0\n")   # a float too: YAML 1.1 reads it as 90.0
    with pytest.raises(ConfigError, match="line 1: YAML reads 1:30.0 in base 60; write the number plainly"):
        load(str(f), [])


def test_an_integer_too_long_for_a_float_is_refused_in_one_line(tmp_path):
    """A 400-digit integer does not fit a float: as an override, in a file, for an int or a float key."""
    huge = "1" + "0" * 400
    for override in (f"seed={huge}", f"max_steps={huge}"):
        with pytest.raises(ConfigError, match=r"must be at most 2147483647, got 1000000000000000000000000000000000000\.\.\.$"):
            load(None, [override])
    f = tmp_path / "c.yaml"
    for text in (f"lr: {huge}", f"seed: {huge}"):
        f.write_text(text + "\n")
        with pytest.raises(ConfigError, match="must be at most 2147483647"):
            load(str(f), [])


def test_a_falsy_arch_is_refused_as_any_other_non_mapping(tmp_path):
    f = tmp_path / "c.yaml"
    for text in ("arch: 0", "arch: false", "arch: []", "arch: ''"):
        f.write_text(text + "\n")
        with pytest.raises(ConfigError, match="arch: expected a mapping of model settings"):
            load(str(f), [])
    f.write_text("arch:\n")   # an empty section: no model settings
    assert load(str(f), []).arch.z_dim == Config().arch.z_dim


def test_a_run_is_named_for_its_family_whatever_its_config_is_called(tmp_path):
    f = tmp_path / "tiny-vhred.yaml"
    f.write_text("epochs: 1\n")
    assert load(str(f), []).name == "tiny-vhred"
    assert load(str(f), ["model=hred"]).name == "tiny-vhred-hred"   # not the VHRED run's folder
    assert load(str(tmp_path / "tiny-vhred.yaml"), ["model=cvae"]).name == "tiny-vhred-cvae"


def test_cvae_has_its_bag_of_words_loss_under_every_shipped_config():
    import glob
    import os

    from tests.conftest import ROOT
    for path in glob.glob(os.path.join(ROOT, "configs", "*.yaml")):
        assert load(path, ["model=cvae"]).arch.bow_weight == 1.0, path


def test_attention_longer_than_a_turn_is_a_warning():
    assert not warnings(Config(max_utt_len=30, arch=ModelConfig(attention=31)), total_steps=20_000)
    said = warnings(Config(max_utt_len=30, arch=ModelConfig(attention=64)), total_steps=20_000)
    assert said == ["attention=64 is longer than a turn can be (max_utt_len=30 pieces and <eos>): "
                    "attention=31 reads the same words in less memory"]


def test_model_keys_plain_or_in_their_section(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("arch:\n  z_dim: 16\n  model: hred\nemb_dim: 20\nlr: 0.5\n")
    cfg = load(str(f), ["arch.utt_hidden=24", "ctx_hidden=26"])
    assert (cfg.arch.z_dim, cfg.arch.model, cfg.arch.emb_dim, cfg.arch.utt_hidden, cfg.arch.ctx_hidden) == (16, "hred", 20, 24, 26)
    assert cfg.name == "c-hred" and cfg.lr == 0.5
    assert from_dict({"arch": {"z_dim": 3}, "seed": 2}) == from_dict({"z_dim": 3, "seed": 2})
    with pytest.raises(ConfigError, match="'lr' is a training setting, not a model one: write it at the top level"):
        load(None, ["arch.lr=3"])
    f.write_text("arch:\n  lr: 0.01\n")   # one indent too many
    with pytest.raises(ConfigError, match="'lr' is a training setting"):
        load(str(f), [])
    with pytest.raises(ConfigError, match="arch: expected a mapping"):
        from_dict({"arch": 3})


def test_every_shipped_config_loads():
    import glob
    import os

    from tests.conftest import ROOT
    for path in glob.glob(os.path.join(ROOT, "configs", "*.yaml")):
        cfg = load(path, [])
        assert cfg.arch.model in ("vhred", "hred") and cfg.name


def test_a_shipped_config_is_found_from_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load("configs/tiny.yaml", []).name == "tiny-vhred"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text("epochs: 7\n")   # one here wins over the checkout's
    assert load("configs/tiny.yaml", []).epochs == 7
    with pytest.raises(ConfigError, match="not found"):
        load("configs/no-such.yaml", [])
