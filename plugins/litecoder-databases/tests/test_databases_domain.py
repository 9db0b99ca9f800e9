"""The databases domain, tested with the fixtures litecoder ships for plugin authors."""

from __future__ import annotations

import polars as pl

from litecoder.testing import completion_body


def test_the_domain_is_found_through_the_entry_point(litecoder_plugins, litecoder_compose):
    assert litecoder_plugins.registry("domain").entry("databases").plugin == "databases"
    cfg = litecoder_compose("domain=databases")
    assert cfg.domain.name == "databases"
    assert len(cfg.domain.subtopics) == 4 and all(s.name for s in cfg.domain.subtopics)


def test_sampling_uses_the_domains_system_message_and_subtopics(litecoder_cli, litecoder_stub_model, litecoder_compose):
    domain = litecoder_compose("domain=databases").domain
    prompts: list[str] = []

    def model(path, body):
        prompts.append(body["prompt"])
        return 200, completion_body([f"database task {len(prompts)}"] * int(body.get("n", 1))), 0

    litecoder_stub_model.handler = model
    result = litecoder_cli("stage=sample", "run.name=db", "domain=databases", f"backend.url={litecoder_stub_model.url}",
                           "sample.num_tasks=8", "sample.n=1", "sample.template.prefix='{system}'")  # no tokenizer needed
    assert result.returncode == 0, result.stderr
    tasks = pl.read_parquet(litecoder_cli.outputs / "db" / "tasks.parquet")
    assert len(tasks) == 8 and set(tasks["domain"]) == {"databases"}
    assert set(tasks["subtopic"]) <= {s.name for s in domain.subtopics}
    assert all(domain.system_message.strip()[:60] in prompt for prompt in prompts)
