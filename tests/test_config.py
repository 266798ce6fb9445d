"""Tests of the typed configuration: dict round-trips, dotted overrides with coercion, config files."""

from __future__ import annotations

import json

import pytest

from mmsent.config import (
    CONFIG_VERSION,
    ConfigError,
    RunConfig,
    TextPrepConfig,
    apply_overrides,
    config_fields,
    flatten,
    load_config_file,
)
from mmsent.registry import MODEL_FAMILIES


def without_version(data: dict) -> dict:
    return {k: v for k, v in data.items() if k != "version"}


# ----------------------------------------------------------------------------- to_dict / from_dict


def test_defaults_to_dict_shape():
    data = RunConfig().to_dict()
    assert data["version"] == CONFIG_VERSION
    assert data["train"]["lr"] == 3e-4 and data["fusion"]["heads"] == 4
    assert data["text_prep"] == {"strip_urls": True, "strip_mentions": True, "placeholders": False,
                                 "split_hashtags": False, "strip_rt": True, "lowercase": True,
                                 "remove_stopwords": False, "max_chars": 2000}
    assert json.loads(json.dumps(data)) == data  # JSON-serialisable


def test_defaults_round_trip():
    config = RunConfig()
    assert RunConfig.from_dict(without_version(config.to_dict())) == config


def test_changed_values_round_trip_through_json():
    config = RunConfig(model="custom", modality="text")
    config.train.lr, config.train.focal_alpha, config.fusion.heads = 0.0025, [0.25, 0.5, 0.25], 8
    config.text_prep.remove_stopwords, config.image.image_size = True, 0
    data = json.loads(json.dumps(config.to_dict()))
    back = RunConfig.from_dict(without_version(data))
    assert back == config and back != RunConfig()
    assert isinstance(back.train, type(config.train)) and isinstance(back.text_prep, TextPrepConfig)


def test_from_dict_accepts_its_own_to_dict():
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


def test_from_dict_partial_keeps_other_defaults():
    config = RunConfig.from_dict({"train": {"epochs": 3}})
    expected = RunConfig()
    expected.train.epochs = 3
    assert config == expected


def test_default_instances_do_not_share_lists():
    a, b = RunConfig(), RunConfig()
    a.train.focal_alpha.append(1.0)
    assert b.train.focal_alpha == []


# ----------------------------------------------------------------------------- apply_overrides


@pytest.mark.parametrize("key, value, expected", [
    ("train.batch_size", "8", 8),
    ("train.batch_size", 16, 16),
    ("train.batch_size", 8.0, 8),
    ("fusion.heads", "2", 2),
    ("train.lr", "1e-4", 1e-4),
    ("train.lr", 1, 1.0),
    ("fusion.dropout", "0.5", 0.5),
    ("text_prep.lowercase", "false", False),
    ("text_prep.lowercase", "0", False),
    ("text_prep.lowercase", "OFF", False),
    ("text_prep.remove_stopwords", "true", True),
    ("text_prep.remove_stopwords", "1", True),
    ("text_prep.remove_stopwords", "yes", True),
    ("text_prep.strip_urls", False, False),
    ("train.focal_alpha", "0.25,0.5,0.25", [0.25, 0.5, 0.25]),
    ("train.focal_alpha", "1, 2 ,3,", [1.0, 2.0, 3.0]),
    ("train.focal_alpha", [1, 2, 3], [1.0, 2.0, 3.0]),
    ("train.focal_alpha", "", []),
    ("custom.widths", "8, 16,32", [8, 16, 32]),
    ("custom.blocks", [2.0, 1], [2, 1]),
    ("text.name", "bert-base-uncased", "bert-base-uncased"),
    ("model", "custom", "custom"),
])
def test_apply_overrides_coerces(key, value, expected):
    config = apply_overrides(RunConfig(), {key: value})
    owner = config
    *parents, leaf = key.split(".")
    for part in parents:
        owner = getattr(owner, part)
    actual = getattr(owner, leaf)
    assert actual == expected and type(actual) is type(expected)
    if isinstance(expected, list):
        assert [type(v) for v in actual] == [type(v) for v in expected]  # int lists stay int, float lists float


def test_apply_overrides_sets_several_keys_in_place_and_leaves_others():
    config = RunConfig()
    result = apply_overrides(config, {"train.epochs": "2", "fusion.name": "concat", "text_prep.max_chars": "100"})
    assert result is config
    assert (config.train.epochs, config.fusion.name, config.text_prep.max_chars) == (2, "concat", 100)
    assert config.train.lr == RunConfig().train.lr and config.fusion.heads == 4


@pytest.mark.parametrize("key", ["train.lrr", "lr", "train", "fusion.heads.x", "version", "nope.lr"])
def test_unknown_key_names_it(key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        apply_overrides(RunConfig(), {key: "1"})


@pytest.mark.parametrize("key, value", [
    ("train.batch_size", "abc"),
    ("train.batch_size", "2.5"),
    ("train.batch_size", 2.5),
    ("train.lr", "fast"),
    ("text_prep.lowercase", "maybe"),
    ("train.focal_alpha", "0.25,x"),
    ("train.focal_alpha", 3),
    ("train.lr", True),
    ("train.epochs", None),
    ("fusion.name", ["x"]),
    ("custom.widths", "8,16.5"),
    ("custom.blocks", "one"),
])
def test_wrong_type_is_a_config_error_naming_the_key(key, value):
    config = RunConfig()
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_overrides(config, {key: value})
    assert config == RunConfig()  # nothing was changed by the failed override


# ----------------------------------------------------------------------------- load_config_file


def test_load_nested_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "train": {"lr": 0.01, "epochs": 4}, "fusion": {"heads": 8},
                                "modality": "image"}))
    overrides = load_config_file(path)
    assert overrides == {"train.lr": 0.01, "train.epochs": 4, "fusion.heads": 8, "modality": "image"}
    config = apply_overrides(RunConfig(), overrides)
    assert (config.train.lr, config.train.epochs, config.fusion.heads, config.modality) == (0.01, 4, 8, "image")


def test_load_flat_dotted_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train.lr": 0.02, "text_prep.lowercase": False, "train.focal_alpha": [1, 2, 3]}))
    overrides = load_config_file(path)
    assert overrides == {"train.lr": 0.02, "text_prep.lowercase": False, "train.focal_alpha": [1, 2, 3]}
    config = apply_overrides(RunConfig(), overrides)
    assert (config.train.lr, config.text_prep.lowercase, config.train.focal_alpha) == (0.02, False, [1.0, 2.0, 3.0])


def test_saved_config_json_loads_back(tmp_path):
    config = RunConfig()
    config.train.seed, config.fusion.dim = 7, 64
    path = tmp_path / "config.json"
    config.save(path)
    assert apply_overrides(RunConfig(), load_config_file(path)) == config


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('"train.lr"', "JSON object"),
])
def test_bad_config_file(tmp_path, content, match):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_config_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "absent.json")


# ----------------------------------------------------------------------------- config_fields / flatten


def test_config_fields_yields_every_leaf_and_no_version():
    keys = [key for key, _, _ in config_fields()]
    assert len(keys) == len(set(keys))
    assert {"train.lr", "fusion.heads", "text_prep.max_chars", "train.focal_alpha", "model", "modality"} <= set(keys)
    assert "version" not in keys
    assert not {"train", "fusion", "text", "image", "text_prep"} & set(keys)
    assert set(keys) == set(flatten(RunConfig().to_dict())) - {"version"}


def test_config_fields_defaults_and_metadata():
    fields_by_key = {key: (f, default) for key, f, default in config_fields()}
    data = flatten(RunConfig().to_dict())
    for key, (_, default) in fields_by_key.items():
        assert default == data[key], key
    assert fields_by_key["train.lr"][0].metadata["flag"] == "--lr"
    assert fields_by_key["fusion.heads"][0].metadata["flag"] == "--heads"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": 2}) == {"a.b": 1, "a.c.d": [1], "e": 2}


def test_model_family_defaults_sit_under_the_users_settings(monkeypatch):
    from mmsent.config import resolve_config
    from mmsent.experiments import Cell, cell_config
    from mmsent.registry import MODEL_FAMILIES

    monkeypatch.setitem(MODEL_FAMILIES._metadata, "custom", {"defaults": {"train.patience": 7, "fusion.heads": 2}})
    assert resolve_config({"model": "custom"}).train.patience == 7
    assert resolve_config({"model": "custom", "train.patience": 4}).train.patience == 4  # the user wins
    assert resolve_config({}).train.patience == RunConfig().train.patience  # other families: untouched
    saved = resolve_config({"model": "custom", "train.patience": 5})
    assert resolve_config({"train.device": "cpu"}, base=saved).train.patience == 5  # a saved run keeps its values
    # in a grid, each cell gets the defaults of its own family, under the user's and the cell's settings
    cell = Cell({"model": "custom"}, {"model": "custom"})
    assert cell_config({}, cell).train.patience == 7
    assert cell_config({"fusion.heads": 8}, cell).fusion.heads == 8
    assert cell_config({}, Cell({"model": "pretrained"}, {"model": "pretrained"})).train.patience == 3


@pytest.mark.parametrize("family", MODEL_FAMILIES.names())
def test_every_family_default_is_a_valid_key(family):
    from mmsent.config import apply_overrides, family_defaults

    apply_overrides(RunConfig(), family_defaults(family))


@pytest.mark.parametrize("key,bad", [("train.backend", "tensorrt"), ("modality", "audio")])
def test_fields_with_choices_refuse_other_values(key, bad):
    from mmsent.config import RunConfig, apply_overrides

    with pytest.raises(ConfigError, match="expected one of"):
        apply_overrides(RunConfig(), {key: bad})


def test_a_run_saved_before_lexicon_scores_were_the_default_reads_none(tmp_path):
    """Lexicon scores are on by default, but a run folder whose config.json has no "lexicon" section was trained
    without them and loads so; a section that says otherwise wins."""
    from mmsent.runfolder import read_run_config

    saved = RunConfig().to_dict()
    assert saved["lexicon"]["enabled"] is True
    del saved["lexicon"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert read_run_config(tmp_path).lexicon.enabled is False
    saved["lexicon"] = {"enabled": True}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert read_run_config(tmp_path).lexicon.enabled is True


# ----------------------------------------------------------------------------- configs composed from plugins


def test_the_data_section_joins_the_options_every_format_shares_with_each_formats_own():
    from dataclasses import fields

    from mmsent.config import DataConfig, DataOptions
    from mmsent.data.table import TableOptions
    from mmsent.registry import FORMATS

    assert FORMATS.config_of("table") is TableOptions and FORMATS.config_of("folder") is None
    assert [f.name for f in fields(DataConfig)] == [f.name for f in (*fields(DataOptions), *fields(TableOptions))]
    old = {"data": {"format": "table", "text_column": "body", "image_column": "picture", "label_column": "label",
                    "id_column": "id", "labels": ["a", "b"], "allow_outside_paths": True}}  # a saved run's section
    config = RunConfig.from_dict(old)
    assert config.data.text_column == "body" and config.data.allow_outside_paths is True
    assert config.to_dict()["data"] == {**old["data"]}
    with pytest.raises(ConfigError, match="expected true/false"):
        apply_overrides(config, {"data.allow_outside_paths": "maybe"})  # a format's option is checked like any


def test_a_composed_config_takes_each_registered_option_once():
    from dataclasses import dataclass, fields

    from mmsent.config import compose_config, option
    from mmsent.registry import Registry

    @dataclass
    class Common:
        """Shared."""

        name: str = option("", help="the plugin")

    @dataclass
    class Width:
        width: int = option(3, help="how wide")

    @dataclass
    class AlsoWidth:
        width: int = option(4)

    things = Registry("thing")
    things.register("wide", config=Width)(object)
    things.register("plain")(object)
    things.register("wide again", config=Width)(object)  # one config for two plugins: its fields once
    composed = compose_config("ThingConfig", Common, things)
    assert [(f.name, f.type, f.metadata["help"]) for f in fields(composed)] == [
        ("name", str, "the plugin"), ("width", int, "how wide")]
    assert composed().width == 3 and composed.__doc__ == "Shared." and composed.__module__ == "mmsent.config"
    things.register("clash", config=AlsoWidth)(object)
    with pytest.raises(ConfigError, match="ThingConfig.width is declared by both .*Width and .*AlsoWidth"):
        compose_config("ThingConfig", Common, things)


# ----------------------------------------------------------------------------- types from annotations, allowed values


@pytest.mark.parametrize("value", ["0.3,0.3,0.4", "[0.3, 0.3, 0.4]", [0.3, 0.3, 0.4], ["0.3", "0.3", "0.4"]])
def test_a_list_whose_default_is_empty_parses_by_its_annotation(value):
    config = apply_overrides(RunConfig(), {"train.focal_alpha": value})
    assert config.train.focal_alpha == [0.3, 0.3, 0.4]
    assert all(type(v) is float for v in config.train.focal_alpha)


def test_set_on_the_command_line_parses_by_the_annotation():
    from mmsent.cli import build_parser, user_overrides
    from mmsent.config import resolve_config

    args = build_parser().parse_args(["train", "--out", "run", "--set", "train.focal_alpha=0.3,0.3,0.4", "--set",
                                      "data.labels=a,b", "--set", "custom.widths=[8, 16]"])
    config = resolve_config(user_overrides(args))
    assert config.train.focal_alpha == [0.3, 0.3, 0.4]
    assert config.data.labels == ["a", "b"] and config.custom.widths == [8, 16]


def test_every_key_has_a_resolved_annotation_including_the_composed_data_section():
    from mmsent.config import config_types

    kinds = config_types()
    assert set(kinds) == {key for key, _, _ in config_fields()}
    assert not any(isinstance(kind, str) for kind in kinds.values())  # no annotation left as a string
    assert kinds["train.focal_alpha"] == list[float] and kinds["custom.widths"] == list[int]
    assert kinds["data.labels"] == list[str] and kinds["data.allow_outside_paths"] is bool
    assert kinds["text_prep.lowercase"] is bool and kinds["train.epochs"] is int and kinds["train.lr"] is float


@pytest.mark.parametrize("value, expected", [("true", True), ("False", False), ("on", True), (0, False), (True, True)])
def test_bool_accepts_true_and_false(value, expected):
    assert apply_overrides(RunConfig(), {"text_prep.lowercase": value}).text_prep.lowercase is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, None, ""])
def test_bool_refuses_anything_else_clearly(value):
    with pytest.raises(ConfigError, match=r"text_prep\.lowercase: expected true/false, got"):
        apply_overrides(RunConfig(), {"text_prep.lowercase": value})


@pytest.mark.parametrize("value", ["1.5", 1.5, "one", True])
def test_an_int_field_refuses_what_is_not_an_integer(value):
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        apply_overrides(RunConfig(), {"train.epochs": value})


@pytest.mark.parametrize("key, bad, allowed", [
    ("image.fit", "stretch", "crop, pad"),
    ("train.decision", "recall", "accuracy, macro_f1"),
    ("model", "transformer", "pretrained"),  # a registry's names
    ("train.loss", "hinge", "cross_entropy"),
    ("fusion.name", "sum", "cross_attention"),
])
def test_a_choice_field_refuses_an_unknown_value_naming_the_allowed_ones(key, bad, allowed):
    config = RunConfig()
    with pytest.raises(ConfigError, match=rf"{key.replace('.', chr(92) + '.')}: expected one of .*{allowed}.*"
                                          rf"got '{bad}'"):
        apply_overrides(config, {key: bad})
    assert config == RunConfig()


def test_the_cli_offers_the_values_allowed_values_allows():
    from mmsent.cli import build_parser
    from mmsent.config import allowed_values

    actions = {action.dest: action for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    for key in ("model", "fusion.name", "train.loss", "train.backend", "train.decision"):
        assert tuple(actions[f"cfg:{key}"].choices) == allowed_values(key), key


def test_an_unknown_key_names_the_close_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'; did you mean train\.lr"):
        apply_overrides(RunConfig(), {"train.lrr": "1"})
    with pytest.raises(ConfigError, match="unknown config key 'zzz'; 'mmsent config' lists every key"):
        apply_overrides(RunConfig(), {"zzz": "1"})


def test_a_refused_override_among_several_changes_nothing():
    config = RunConfig()
    with pytest.raises(ConfigError):
        apply_overrides(config, {"train.epochs": "3", "train.lr": "fast"})
    assert config == RunConfig()


@pytest.mark.parametrize("kind, value, expected", [
    ("int | None", None, None),
    ("int | None", "null", None),
    ("int | None", "7", 7),
    ("Optional[float]", "none", None),
    ("Optional[float]", "0.5", 0.5),
    ("str | None", None, None),
    ("str | None", "none", "none"),  # a string field keeps the word
    ("list", "a,b", ["a", "b"]),
])
def test_parse_value_by_annotation(kind, value, expected):
    import typing

    from mmsent.config import parse_value

    assert parse_value("k", value, eval(kind, {"Optional": typing.Optional})) == expected


def test_parse_value_refuses_by_annotation():
    from mmsent.config import parse_value

    with pytest.raises(ConfigError, match="k: expected int"):
        parse_value("k", "x", int | None)
    with pytest.raises(ConfigError, match="k: expected a comma-separated list of ints"):
        parse_value("k", "1,x", list[int])


def test_a_config_built_in_python_is_checked_by_the_same_function():
    from mmsent.config import check_config

    check_config(RunConfig())
    config = RunConfig(modality="audio")
    with pytest.raises(ConfigError, match="modality: expected one of all, image, text, got 'audio'"):
        check_config(config)
    config = RunConfig()
    config.image.fit = "stretch"
    with pytest.raises(ConfigError, match=r"image\.fit: expected one of crop, pad"):
        check_config(config)


def test_the_data_format_is_a_registered_one_or_detected():
    from mmsent.registry import FORMATS

    assert apply_overrides(RunConfig(), {"data.format": "table"}).data.format == "table"
    assert apply_overrides(RunConfig(), {"data.format": ""}).data.format == ""
    with pytest.raises(ConfigError, match=rf"data\.format: expected one of {', '.join(FORMATS.names())}"):
        apply_overrides(RunConfig(), {"data.format": "xml"})
