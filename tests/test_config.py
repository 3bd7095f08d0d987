import os

import pytest

from t2i.config import load_config, parse_arg
from t2i.errors import UsageError

CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs/shapes_classifier.py")


def test_parse_arg():
    assert parse_arg("variant=600M,runlocal") == {"variant": "600M", "runlocal": True}
    assert parse_arg(None) == {}


def test_overrides_are_typed():
    config = load_config(
        CONFIG + ":tiny",
        ["data.batch_size=16", "--config.optimizer.learning_rate=1", "model.widths=(4,8)", "train.eval_ema=false"],
    )
    assert config.data.batch_size == 16
    assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
    assert config.model.widths == (4, 8)
    assert config.train.eval_ema is False


def test_arg_changes_config():
    assert load_config(CONFIG).data.builder_config == "small"
    assert load_config(CONFIG + ":tiny").data.builder_config == "tiny"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batchsize=3", "unknown config key 'data.batchsize'"),
        ("nope=3", "unknown config key 'nope'"),
        ("data.batch_size=abc", "bad value for config key 'data.batch_size': expected int, got 'abc'"),
        ("train.eval_ema=maybe", "bad value for config key 'train.eval_ema': expected a boolean"),
        ("data=3", "config key 'data' is a group"),
        ("data.batch_size", "must be key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UsageError) as info:
        load_config(CONFIG, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_locked_config_rejects_new_keys():
    config = load_config(CONFIG)
    with pytest.raises(AttributeError):
        config.data.new_key = 1


def test_missing_config_file():
    with pytest.raises(UsageError, match="config file not found: nope.py"):
        load_config("nope.py")
