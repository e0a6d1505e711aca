"""Plugin discovery and the four hooks, with plugins defined here (real pluggy, real engine)."""

from __future__ import annotations

import importlib.metadata as md
import types

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import automl_tl.plugins
from automl_tl.core.contract import BackboneSpec, Stage, StrategySpec
from automl_tl.core.errors import AutoTLError
from automl_tl.core.tasks import HeadConfig, HeadTask, TrainResult
from automl_tl.data.preprocess import Preprocessing
from automl_tl.decide.planner import make_plan
from automl_tl.decide.profile import add_verdicts, size_profile
from automl_tl.features.extractor import FeatureExtractor
from automl_tl.plugins import manager as plugins_mod
from automl_tl.plugins.hookspecs import hookimpl
from automl_tl.plugins.manager import load_plugins


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2)
        self.b = nn.Conv2d(4, 6, 3, stride=2)
        self.classifier = None

    def forward_stages(self, x, upto):
        maps = [self.a(x)]
        if upto >= 1:
            maps.append(self.b(maps[0]))
        return maps


def _tiny_spec(name="tiny"):
    return BackboneSpec(
        name=name,
        build=lambda weights=None, pretrained=True, allow_download=False: _TinyNet(),
        stages=(Stage("a", 4, 2), Stage("b", 6, 4)),
        preprocessing=Preprocessing(crop_size=32, resize_size=36),
        source_domain="none",
    )


def _centroid_fit(task: HeadTask) -> TrainResult:
    """A strategy: nearest class centroid as a linear layer."""
    k = task.n_classes
    centres = np.stack([task.x_train[task.y_train == c].mean(0) for c in range(k)])
    head = nn.Linear(centres.shape[1], k)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(2 * centres))
        head.bias.copy_(torch.from_numpy(-(centres**2).sum(1)))
    return TrainResult(head, 1, [{"epoch": 1}])


def plugin(**hooks):
    """A new plugin object implementing the given hooks (distinct even for equal hooks)."""
    members = {name: staticmethod(hookimpl(fn)) for name, fn in hooks.items()}
    return type("Plugin", (), members)()


def _backbones(register):
    register(_tiny_spec())


def _strategies(register):
    register(StrategySpec("centroid", "nearest class centroid", _centroid_fit))


def test_builtins_are_registered_through_hooks():
    ps = load_plugins()
    assert ps.owner["backbones", "efficientnet_lite0"] == "efficientnet_lite"
    assert ps.owner["strategies", "linear_head"] == "strategies"
    assert ps.strategies["linear_head"].case == 1
    assert ps.hooks_of("strategies") == ["register_strategies"]
    assert ps.failures == {}


def test_third_party_backbone_and_strategy():
    ps = load_plugins({"third": plugin(register_backbones=_backbones,
                                       register_strategies=_strategies)})  # fmt: skip
    spec = ps.backbone("tiny")
    assert ps.owner["backbones", "tiny"] == "third"
    fx = FeatureExtractor(spec.build(), spec.preprocessing, 1)
    assert fx(torch.rand(2, 3, 32, 32)).shape == (2, 6)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 6)), rng.normal(5, 1, (20, 6))]).astype("f4")
    y = np.repeat([0, 1], 20)
    res = ps.strategy("centroid").fit(HeadTask(x, y, x, y, 2, HeadConfig(), None))
    assert (res.head(torch.from_numpy(x)).argmax(1).numpy() == y).mean() == 1.0


def test_clash_names_both_plugins_and_broken_plugin_is_isolated():
    def broken(register):
        raise RuntimeError("plugin bug")

    ps = load_plugins({
        "first": plugin(register_backbones=_backbones),
        "second": plugin(register_backbones=_backbones),
        "broken": plugin(register_backbones=broken),
    })  # fmt: skip
    assert "tiny" in ps.backbones and "efficientnet_lite0" in ps.backbones
    assert "registered by both plugin first and plugin second" in ps.failures["second"]
    assert "plugin bug" in ps.failures["broken"]


def test_register_validates_the_spec_type():
    ps = load_plugins({"sloppy": plugin(register_backbones=lambda register: register("x"))})
    assert "expected a BackboneSpec" in ps.failures["sloppy"]


def test_misspelled_hook_is_reported_and_only_that_plugin_dropped():
    typo = types.SimpleNamespace(register_backbone=hookimpl(lambda register: None))
    ps = load_plugins({"typo": typo, "fine": plugin(register_strategies=_strategies)})
    assert "unknown hook" in ps.failures["typo"] and "register_backbone" in ps.failures["typo"]
    assert "centroid" in ps.strategies


def test_broken_entry_point_is_reported(monkeypatch):
    real = md.entry_points

    def fake(group=None, **kw):
        eps = list(real(group=group, **kw)) if group else []
        if group == "automl_tl":
            eps.append(md.EntryPoint("ghost", "no_such_module_for_automl_tl", "automl_tl"))
        return eps

    monkeypatch.setattr(plugins_mod.metadata, "entry_points", fake)
    ps = load_plugins()
    assert "ModuleNotFoundError" in ps.failures["ghost"]
    assert "efficientnet_lite0" in ps.backbones


def test_environment_disables_or_allow_lists(monkeypatch):
    monkeypatch.setenv("AUTOML_TL_DISABLE_PLUGINS", "timm_backbones, torchvision_backbones")
    names = {n for n, _ in load_plugins().manager.list_name_plugin()}
    assert "timm_backbones" not in names and "efficientnet_lite" in names
    monkeypatch.delenv("AUTOML_TL_DISABLE_PLUGINS")
    monkeypatch.setenv("AUTOML_TL_PLUGINS", "efficientnet_lite,strategies")
    ps = load_plugins()
    assert {n for n, _ in ps.manager.list_name_plugin()} == {"efficientnet_lite", "strategies"}
    assert "resnet18" not in ps.backbones and ps.failures == {}


def test_an_allow_listed_plugin_that_is_not_installed_is_reported(monkeypatch):
    monkeypatch.setenv("AUTOML_TL_PLUGINS", "foo")
    ps = load_plugins()
    assert list(ps.manager.list_name_plugin()) == []
    assert ps.failures == {
        "foo": "not installed: AUTOML_TL_PLUGINS names it, but there is no built-in plugin or "
        "`automl_tl` entry point of that name (`automl-tl plugins` lists what is)"
    }


def _profile():
    profile = size_profile(["a"] * 10 + ["b"] * 10, ["a", "b"], [])
    profile.feature_width = 1280
    add_verdicts(profile)  # small; similarity not measured -> assumed similar: case 1
    return profile


def test_select_strategy_overrides_planner_and_user_overrides_both():
    def small_data_centroid(profile):
        return "centroid" if profile.images < 50 else None

    ps = load_plugins(
        {"third": plugin(register_strategies=_strategies, select_strategy=small_data_centroid)}
    )
    spec = ps.backbone("efficientnet_lite0")
    plan = make_plan(_profile(), spec, HeadConfig(), ps)
    assert plan.strategy == "centroid"
    assert any("plugin third selected strategy 'centroid'" in r for r in plan.reasons)
    plan = make_plan(_profile(), spec, HeadConfig(), ps, strategy="linear_head")
    assert plan.strategy == "linear_head" and plan.case == 1
    with pytest.raises(AutoTLError, match="unknown strategy 'nope'"):
        make_plan(_profile(), spec, HeadConfig(), ps, strategy="nope")


def test_select_strategy_none_leaves_the_planner_alone():
    ps = load_plugins({"quiet": plugin(select_strategy=lambda profile: None)})
    plan = make_plan(_profile(), ps.backbone("efficientnet_lite0"), HeadConfig(), ps)
    assert plan.strategy == "linear_head"


def test_register_commands_adds_cli_commands(monkeypatch):
    def commands(cli):
        @cli.command("hello")
        def hello():
            click.echo("hello from a plugin")

    ps = load_plugins({"cmds": plugin(register_commands=commands)})
    monkeypatch.setattr(automl_tl.plugins, "get_plugins", lambda: ps)
    from automl_tl.cli import _PluginGroup, main

    group = _PluginGroup(commands=dict(main.commands))
    res = CliRunner().invoke(group, ["hello"])
    assert res.exit_code == 0 and res.output == "hello from a plugin\n"
    assert "hello" in CliRunner().invoke(group, ["--help"]).output


def test_list_commands_print_tables_and_json():
    from automl_tl.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["plugins"])
    assert res.exit_code == 0 and "efficientnet_lite" in res.output and "VERSION" in res.output
    res = runner.invoke(main, ["strategies", "--json"])
    items = {i["name"]: i for i in __import__("json").loads(res.output)["items"]}
    assert items["linear_head"]["case"] == 1
