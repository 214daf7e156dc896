"""Configuration: defaults, overrides, and one-line errors that name the key."""

from __future__ import annotations

import tomllib

import pytest

from fedhex_hep.config import ConfigError, config_from_dict, default_config_text, load_config, parse_override


def test_defaults_match_reference_analysis():
    cfg = load_config()
    assert cfg.input.selection == "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220"
    assert cfg.input.features == {"phi": "CBL_RecoPhi_mass", "omega": "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"}
    assert cfg.input.labels == {"labelphi": "GenPhi_mass[0]", "labelomega": "GenOmega_mass[0]"}
    assert cfg.input.min_events_per_label == 150
    assert cfg.preprocessing.features["phi"].relative_to == "labelphi"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training.epocs": 5}, "'training.epocs': unknown key (did you mean 'training.epochs'?)"),
        ({"trainin": {"epochs": 5}}, "'trainin': unknown key (did you mean 'training'?)"),
        ({"training.epochs": "5"}, "'training.epochs' must be an integer, got str '5'"),
        ({"training.learning_rate": "fast"}, "'training.learning_rate' must be a number"),
        ({"training.epochs": True}, "'training.epochs' must be an integer"),
        ({"training.epochs": -3}, "'training.epochs' must be an integer in [1, 1000000], got -3"),
        ({"model.kind": "splin"}, "'model.kind' = 'splin' is not one of maf, spline (did you mean 'spline'?)"),
        ({"input.features": {}}, "'input.features' is empty"),
        ({"model.spline_blocks": 6}, "'model.spline_blocks' = 6 exceeds 'model.n_blocks' = 5"),
        ({"model.n_blocks": 1}, "'model.spline_blocks' = 2 exceeds 'model.n_blocks' = 1; with fewer blocks, set 'model.spline_blocks' (default 2) as well"),
        ({"model.spline_blocks": -1}, "'model.spline_blocks' must be an integer in [0, 100], got -1"),
        ({"model.base_components": 0}, "'model.base_components' must be an integer in [1, 100], got 0"),
        ({"input.paths": "data"}, "'input.paths' must be a list"),
        ({"generation.ranges": {"phi": [5.0, 1.0]}}, "'generation.ranges.phi' must be [min, max] of finite numbers with min < max"),
        ({"generation.ranges": {"phii": [1.0, 5.0]}}, "no feature named 'phii' (did you mean 'phi'?)"),
        ({"generation.labels": [[1.0]]}, "'generation.labels[0]' has 1 values, expected 2"),
        ({"training.validation_fraction": 1.5}, "'training.validation_fraction' must be in [0, 1)"),
        ({"preprocessing.features.phi.relative_to": "nolabel"}, "'nolabel' is not a label"),
        ({"training.label_jitter": {"labelph": 0.1}}, "no label named 'labelph' (did you mean 'labelphi'?)"),
        ({"training.label_jitter": {"labelphi": -0.1}}, "'training.label_jitter.labelphi' must be a finite number in [0, 10]"),
        ({"training.label_jitter": {"labelphi": float("nan")}}, "'training.label_jitter.labelphi' must be a finite"),
        ({"training.label_jitter": {"labelphi": "10%"}}, "'training.label_jitter.labelphi' must be a number, got str"),
        ({"training.label_jitter": {"labelphi": True}}, "'training.label_jitter.labelphi' must be a number, got bool"),
        ({"training.spline_label_jitter": {"labelomeg": 0.1}}, "no label named 'labelomeg' (did you mean 'labelomega'?)"),
        ({"training.spline_label_jitter": {"labelphi": 11}}, "'training.spline_label_jitter.labelphi' must be a finite number in [0, 10]"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(overrides=overrides)
    text = str(excinfo.value)
    assert message in text
    assert "\n" not in text


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nepochs = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_config(tmp_path / "missing.toml")


def test_file_values_override_defaults_and_cli_overrides_win(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[training]\nepochs = 7\nseed = 3\n")
    cfg = load_config(path, overrides={"training.seed": 11})
    assert cfg.training.epochs == 7
    assert cfg.training.seed == 11
    assert cfg.training.batch_size == load_config().training.batch_size


def test_user_feature_table_replaces_default_and_drops_default_preprocessing():
    cfg = config_from_dict({"input": {"features": {"mass": "Muon_pt[0]"}, "labels": {"m": "mass_point"}}})
    assert cfg.feature_names == ["mass"]
    assert cfg.label_names == ["m"]
    assert cfg.preprocessing.features == {}
    # explicit per-label smearing names labels: a config with its own labels starts with none;
    # the default smearing follows each label's grid spacing, whatever the names
    assert load_config().training.label_jitter == {}
    assert load_config().training.label_jitter_spacing == cfg.training.label_jitter_spacing > 0
    assert cfg.training.label_jitter == {}
    assert cfg.training.spline_label_jitter == {}
    assert load_config().training.spline_label_jitter == {"labelphi": 0.3}
    own = config_from_dict({"input": {"labels": {"m": "mass_point"}}, "training": {"label_jitter": {"m": 0.2}}})
    assert own.training.label_jitter == {"m": 0.2}
    assert load_config(overrides=dict([parse_override("training.label_jitter={}")])).training.label_jitter == {}
    no_spline = load_config(overrides=dict([parse_override("training.spline_label_jitter={}")]))
    assert no_spline.training.spline_label_jitter == {}


def test_dotted_override_changes_one_entry_of_a_named_table(tmp_path):
    # --set preprocessing.features.omega.standardise=false must keep omega's relative_to and log,
    # and phi's entry; it once replaced the whole table with a bare {omega: {standardise}}.
    cfg = load_config(overrides={"preprocessing.features.omega.standardise": False})
    default = load_config().preprocessing.features
    assert cfg.preprocessing.features["phi"] == default["phi"]
    omega = cfg.preprocessing.features["omega"]
    assert (omega.relative_to, omega.transform, omega.standardise) == ("labelomega", "log", False)
    # the same over a user's file that names its own columns
    path = tmp_path / "run.toml"
    path.write_text('[input.features]\nmass = "Muon_pt[0]"\n[input.labels]\nm = "mass_point"\n'
                    '[preprocessing.features.mass]\ntransform = "log"\n')
    cfg = load_config(path, overrides={"preprocessing.features.mass.standardise": False, "input.features.eta": "Muon_eta[0]"})
    assert cfg.feature_names == ["mass", "eta"]
    assert cfg.preprocessing.features["mass"].transform == "log" and not cfg.preprocessing.features["mass"].standardise


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(overrides={"training.epochs": 9, "generation.ranges": {"phi": [100.0, 4000.0]}})
    path = cfg.write(tmp_path / "config.toml")
    again = load_config(path)
    assert again == cfg
    assert tomllib.loads(path.read_text())["training"]["epochs"] == 9


def test_with_overrides_validates():
    cfg = load_config()
    assert cfg.with_overrides({"training.epochs": 2}).training.epochs == 2
    with pytest.raises(ConfigError, match=r"'model.n_blocks' must be an integer in \[1, 100\]"):
        cfg.with_overrides({"model.n_blocks": 0})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("training.epochs=5", ("training.epochs", 5)),
        ("training.learning_rate=3e-4", ("training.learning_rate", 3e-4)),
        ("input.paths=['a', 'b']", ("input.paths", ["a", "b"])),
        ("model.kind=spline", ("model.kind", "spline")),
        ("input.skip_bad_files=false", ("input.skip_bad_files", False)),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("training.epochs")


def test_default_text_is_valid_toml():
    assert "input" in tomllib.loads(default_config_text())
