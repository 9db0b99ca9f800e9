"""Plugins: built-ins and third parties use the same hooks; duplicates need intent."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import polars as pl
import pytest

from litecoder import hookimpl, hookspecs
from litecoder.backends.base import Backend
from litecoder.config import DomainConfig, SubtopicConfig
from litecoder.errors import PluginError
from litecoder.run import execute
from litecoder.exporters.base import Exporter
from litecoder.stage import Stage


def test_every_hook_is_prefixed_and_documented():
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "litecoder_spec")]
    assert len(hooks) >= 9
    for name in hooks:
        assert name.startswith("litecoder_")
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"


def test_the_plugin_guide_documents_every_hook():
    from .conftest import REPO

    guide = (REPO / "docs" / "plugins.md").read_text()
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "litecoder_spec")]
    missing = [name for name in hooks if f"| `{name}` |" not in guide]
    assert missing == [], f"docs/plugins.md has no row for {missing}"
    rows = {line.split("`")[1]: line for line in guide.splitlines() if line.startswith("| `litecoder_")}
    for name in hooks:  # every argument, in order, as the row's signature
        arguments = "(" + ", ".join(inspect.signature(getattr(hookspecs, name)).parameters) + ")"
        assert f"`{arguments}" in rows[name], f"docs/plugins.md's row for {name} does not show {arguments}"


def test_info_plugins_lists_what_each_plugin_registers_and_reports_a_broken_one(tmp_path):
    import os
    import subprocess
    import sys

    from .conftest import REPO

    listing = subprocess.run([sys.executable, "-m", "litecoder", "--info", "plugins"], cwd=tmp_path,
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    assert "litecoder.stages.trajectory  [built-in]\n    stage trajectory" in out
    assert "databases  [litecoder-databases 0.1.0]" in out and "    domain databases" in out
    assert "0 failed to import" in out

    # A plugin whose import fails: listed with its error, and a run stops naming it.
    site = tmp_path / "site"
    (site / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "broken_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (site / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text("[litecoder]\nbroken = broken_mod\n")
    (site / "broken_mod.py").write_text("raise RuntimeError('cannot find its model files')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    listing = subprocess.run([sys.executable, "-m", "litecoder", "--info", "plugins"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "1 failed to import" in listing.stdout
    assert ("broken  [FAILED to import: broken-plugin 0.1, broken_mod: RuntimeError: cannot find its model files]"
            in listing.stdout)
    run = subprocess.run([sys.executable, "-m", "litecoder", "--cfg", "job"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip() == ("litecoder: error: plugin 'broken' (broken-plugin 0.1, broken_mod) failed to import: "
                                  "RuntimeError: cannot find its model files")


def test_builtins_register_through_the_hooks(plugins):
    assert {"sample", "judge", "environment", "trajectory", "export"} <= set(plugins.registry("stage").names())
    assert {"vllm", "openai"} <= set(plugins.registry("backend").names())
    assert plugins.registry("stage").entry("sample").plugin == "litecoder.stages.sample"
    assert plugins.registry("domain").entry("networking").plugin == "litecoder.domains"


def test_the_installed_plugin_package_adds_a_domain_by_config_alone(plugins, compose_cfg):
    """plugins/litecoder-databases is pip-installed and found through its entry point."""
    assert plugins.pm.get_plugin("databases") is not None
    assert plugins.registry("domain").entry("databases").plugin == "databases"
    cfg = compose_cfg("domain=databases")
    assert cfg.domain.name == "databases" and len(cfg.domain.subtopics) == 4


class CountingStage(Stage):
    name, order = "sample", 10
    calls: list = []

    def run(self, run):
        CountingStage.calls.append(run.cfg.domain.name)
        pl.DataFrame({"text": [f"{s.name}" for s in run.cfg.domain.subtopics]}).write_parquet(run.path("tasks.parquet"))
        return {"tasks": len(run.cfg.domain.subtopics)}


class InlinePlugin:
    @hookimpl
    def litecoder_register_domains(self, register):
        register("quantum_sim", DomainConfig(
            name="quantum_sim",
            description="Simulating small quantum circuits with CLI tools.",
            system_message="You help people simulate quantum circuits on a laptop.",
            subtopics=[SubtopicConfig(name="state vectors"), SubtopicConfig(name="noise models", weight=2.0)],
        ))

    @hookimpl
    def litecoder_register_stages(self, register):
        register("sample", CountingStage, replace=True)


def test_an_inline_plugin_adds_a_domain_and_replaces_a_stage(plugins, compose_cfg, tmp_path):
    CountingStage.calls.clear()
    plugins.register(InlinePlugin(), "inline-test-plugin")
    assert plugins.registry("stage").entry("sample").plugin == "inline-test-plugin"
    cfg = compose_cfg("domain=quantum_sim", "stage=sample")
    summaries = execute(cfg, tmp_path / "run", plugins)
    assert CountingStage.calls == ["quantum_sim"]
    assert summaries == {"sample": {"tasks": 2}}
    assert pl.read_parquet(tmp_path / "run" / "tasks.parquet")["text"].to_list() == ["state vectors", "noise models"]


def test_removing_the_plugin_restores_the_builtin(plugins, compose_cfg):
    plugins.register(InlinePlugin(), "inline-test-plugin")
    plugins.unregister("inline-test-plugin")
    assert plugins.registry("stage").entry("sample").plugin == "litecoder.stages.sample"
    with pytest.raises(Exception, match="quantum_sim"):
        compose_cfg("domain=quantum_sim")


def test_an_accidental_duplicate_stage_is_an_error_naming_both(plugins):
    class Duplicate:
        @hookimpl
        def litecoder_register_stages(self, register):
            register("sample", CountingStage)

    with pytest.raises(PluginError, match="'litecoder.stages.sample' and 'dup-plugin'.*replace=True"):
        plugins.register(Duplicate(), "dup-plugin")


def test_a_config_that_a_kind_does_not_take_is_an_error_not_ignored(plugins):
    class BuilderWithConfig:
        @hookimpl
        def litecoder_register_image_builders(self, register):
            register("counting", lambda cfg, client: "img", config=EchoBackendConfig)

    with pytest.raises(PluginError, match="image_builder 'counting' with config=, which a image_builder does not take"):
        plugins.register(BuilderWithConfig(), "builder-config-plugin")


@dataclass
class CountingConfig:
    per_subtopic: int = 1


@dataclass
class RewardListConfig:
    path: str = "rewards.json"


class StageAndExporterWithSchemas:
    @hookimpl
    def litecoder_register_stages(self, register):
        register("counting", CountingStage, config=CountingConfig)
        register("sample", CountingStage, config=CountingConfig, replace=True)

    @hookimpl
    def litecoder_register_exporters(self, register):
        register("rewards", Exporter, config=RewardListConfig)


def test_a_stage_and_an_exporter_bring_their_schemas(plugins, compose_cfg):
    """A stage's config is the run config's node of its name; an exporter's is export.<name>;
    a replacement stage's schema replaces the built-in's, so its old keys are errors."""
    plugins.register(StageAndExporterWithSchemas(), "schemas-plugin")
    cfg = compose_cfg("counting.per_subtopic=3", "export.rewards.path=r.json")
    assert cfg.counting.per_subtopic == 3 and cfg.sample.per_subtopic == 1
    assert cfg.export.rewards.path == "r.json" and cfg.export.harbor.check_solution is True
    with pytest.raises(Exception, match="per_subtopc"):
        compose_cfg("counting.per_subtopc=3")
    with pytest.raises(Exception, match="num_tasks"):
        compose_cfg("sample.num_tasks=3")
    with pytest.raises(Exception, match="per_subtopic"):
        compose_cfg("counting.per_subtopic=many")
    plugins.unregister("schemas-plugin")
    assert compose_cfg("sample.num_tasks=3").sample.num_tasks == 3


def test_a_stage_named_like_a_core_key_cannot_bring_a_config(plugins):
    class Clash:
        @hookimpl
        def litecoder_register_stages(self, register):
            register("budget", CountingStage, config=CountingConfig)

    with pytest.raises(PluginError, match="stage 'budget' brings a config, but 'budget' is a core config key"):
        plugins.register(Clash(), "clash-plugin")


def test_a_duplicate_domain_file_is_an_error(plugins, tmp_path):
    (tmp_path / "domain").mkdir()
    (tmp_path / "domain" / "networking.yaml").write_text("name: networking\ndescription: d\nsystem_message: s\n")

    class Shadow:
        @hookimpl
        def litecoder_config_search_paths(self):
            return [f"file://{tmp_path}"]

    with pytest.raises(PluginError, match="domain 'networking' is registered by both"):
        plugins.register(Shadow(), "shadow-plugin")


def test_a_misspelled_hook_is_caught(plugins):
    class Typo:
        @hookimpl
        def litecoder_register_stage(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="litecoder_register_stage"):
        plugins.register(Typo(), "typo-plugin")


@dataclass
class EchoBackendConfig:
    type: str = "echo"
    model: str = "echo-1"
    prefix: str = "ECHO"


class EchoBackend(Backend):
    supports_raw_completion = True
    started = 0

    def __init__(self, config, run_dir=None):
        self.config = config

    def start(self):
        EchoBackend.started += 1

    def close(self):
        pass

    def client(self):
        raise AssertionError("not used in this test")

    def describe(self):
        return {"backend": "echo", "model": self.config.model}


def test_a_plugin_backend_becomes_a_config_option_with_its_schema(plugins, compose_cfg, tmp_path):
    class BackendPlugin:
        @hookimpl
        def litecoder_register_backends(self, register):
            register("echo", EchoBackend, config=EchoBackendConfig)

    plugins.register(BackendPlugin(), "echo-plugin")
    cfg = compose_cfg("backend=echo", "backend.prefix=HI")
    assert cfg.backend.prefix == "HI"
    with pytest.raises(Exception, match="prefx"):
        compose_cfg("backend=echo", "backend.prefx=HI")
    from litecoder.run import Run

    run = Run(cfg, tmp_path / "run", plugins)
    EchoBackend.started = 0
    assert run.backend("sample") is run.backend("judge")  # same config: one shared backend
    assert EchoBackend.started == 1


def test_lifecycle_hooks_see_every_stage(plugins, compose_cfg, tmp_path):
    seen = []

    class Watcher:
        @hookimpl
        def litecoder_register_stages(self, register):
            register("sample", CountingStage, replace=True)

        @hookimpl
        def litecoder_before_stage(self, stage, run):
            seen.append(("before", stage, run.name))

        @hookimpl
        def litecoder_after_stage(self, stage, run, summary):
            seen.append(("after", stage, summary["tasks"]))

    plugins.register(Watcher(), "watcher-plugin")
    execute(compose_cfg("stage=sample"), tmp_path / "watched", plugins)
    assert seen == [("before", "sample", "watched"), ("after", "sample", 6)]
