"""Every config group option composes; schema violations fail at compose time."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from litecoder.paths import core_conf_dir

DOMAINS = ["ai_ml", "build_tools", "data_science", "networking", "security", "system_admin", "version_control"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (core_conf_dir() / group).glob("*.yaml"))


def test_the_taxonomy_has_the_seven_domains():
    assert options("domain") == DOMAINS


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("prompts", options("prompts"))
def test_every_domain_composes_with_every_prompt_variant(compose_cfg, domain, prompts):
    cfg = compose_cfg(f"domain={domain}", f"prompts={prompts}")
    assert cfg.domain.name == domain
    assert cfg.prompts.name == prompts
    assert cfg.domain.system_message.strip()
    assert len(cfg.domain.subtopics) >= 4
    assert all(s.weight > 0 and s.name for s in cfg.domain.subtopics)


@pytest.mark.parametrize(
    "overrides, check",
    [
        (["backend=vllm"], lambda c: c.backend.type == "vllm"),
        (["backend=openai", "backend.model=gpt-4.1-mini"], lambda c: c.backend.type == "openai"),
        (["judge=default"], lambda c: len(c.judge.criteria) >= 5),
        (["sandbox=docker"], lambda c: c.sandbox.toolchain is True and c.trajectory.network == "none" and c.environment.network == "registries"),
        (["agent=terminus"], lambda c: c.agent.max_turns > 0),
    ],
)
def test_every_component_option_composes(compose_cfg, overrides, check):
    assert check(compose_cfg(*overrides))


def test_the_default_backend_points_at_the_local_model(compose_cfg):
    cfg = compose_cfg()
    assert cfg.backend.type == "vllm"
    assert cfg.backend.model_path.endswith("models/SmolLM2-135M-Instruct")
    assert cfg.sample.backend is None  # the stage falls back to the run's backend


def test_each_stage_can_have_its_own_backend(compose_cfg):
    cfg = compose_cfg("backend@judge.backend=openai", "judge.backend.model=gpt-4.1", "backend@trajectory.backend=openai",
                      "trajectory.backend.model=teacher", "trajectory.backend.base_url=http://127.0.0.1:9/v1")
    assert cfg.backend.type == "vllm"
    assert cfg.judge.backend.type == "openai" and cfg.judge.backend.model == "gpt-4.1"
    assert cfg.trajectory.backend.base_url == "http://127.0.0.1:9/v1"
    assert cfg.environment.backend is None


def test_a_misspelled_key_fails_naming_the_key(compose_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg("sample.num_taks=3")
    assert "num_taks" in str(info.value.__cause__ or info.value)


def test_a_misspelled_backend_key_fails_against_the_backend_schema(compose_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg("backend.max_in_fligth=3")
    assert "max_in_fligth" in str(info.value.__cause__ or info.value)


def test_a_wrong_type_fails_naming_the_key(compose_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg("sample.n=many")
    cause = info.value.__cause__ or info.value
    assert isinstance(cause, (ValidationError, ConfigCompositionException))
    assert "sample.n" in str(cause)


def test_a_domain_file_with_an_unknown_key_is_rejected(tmp_path, compose_cfg, plugins):
    from litecoder import hookimpl

    (tmp_path / "domain").mkdir()
    (tmp_path / "domain" / "broken.yaml").write_text(
        "name: broken\ndescription: d\nsystem_message: s\nsubtopcs: []\n"
    )

    class Paths:
        @hookimpl
        def litecoder_config_search_paths(self):
            return [f"file://{tmp_path}"]

    plugins.register(Paths(), "broken-domain-plugin")
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg("domain=broken")
    assert "subtopcs" in str(info.value.__cause__ or info.value)


def test_a_wrong_group_choice_lists_the_options(compose_cfg):
    with pytest.raises(Exception) as info:
        compose_cfg("domain=netwerking")
    text = str(info.value)
    assert "netwerking" in text and "networking" in text and "version_control" in text


def test_configs_are_plain_data(compose_cfg):
    cfg = compose_cfg()
    data = OmegaConf.to_container(cfg, resolve=True)
    assert data["stage"] == "sample"
    with pytest.raises(ConfigAttributeError):
        cfg.domain.no_such_key = 1


def test_hydras_settings_come_from_its_own_groups(compose_cfg):
    """config.yaml holds litecoder's keys only; Hydra's are options of Hydra's groups."""
    from hydra import compose, initialize_config_dir

    compose_cfg()  # registers the schemas
    primary = OmegaConf.load(core_conf_dir() / "config.yaml")
    assert "hydra" not in primary
    with initialize_config_dir(config_dir=str(core_conf_dir()), version_base=None):
        hydra = compose(config_name="config", return_hydra_config=True).hydra
    assert hydra.runtime.choices["hydra/output"] == "litecoder"
    assert OmegaConf.to_container(hydra.run)["dir"] == "${run.root}/${litecoder.run_name:${run.name}}"
    assert hydra.callbacks.litecoder_sweep._target_ == "litecoder.sweep.SweepCallback"
    assert hydra.job.chdir is False and "backend.url" in hydra.job.config.override_dirname.exclude_keys
    logging = hydra.job_logging
    assert logging.loggers.httpx.level == "WARNING" and "file" in logging.handlers  # Hydra's default kept
