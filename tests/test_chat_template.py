"""The MAGPIE pre-query prefix and stop strings come from the model's own chat template."""

from __future__ import annotations

import json

import pytest

from litecoder.chat_template import PreQueryBuilder, explicit_prequery, load_chat_template
from litecoder.errors import ConfigError

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
)


def tokenizer_dir(tmp_path, template, bos="", eos="", *, as_list=False):
    config = {"bos_token": bos, "eos_token": {"content": eos} if eos else None}
    config["chat_template"] = [{"name": "default", "template": template}, {"name": "tool_use", "template": "x"}] if as_list else template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.model
def test_chatml_prefix_from_the_real_smollm2_tokenizer(model_dir):
    builder = PreQueryBuilder(load_chat_template(model_dir))
    prequery = builder.build("You help with git.")
    assert prequery.prefix == "<|im_start|>system\nYou help with git.<|im_end|>\n<|im_start|>user\n"
    assert prequery.stop == ["<|im_end|>"]
    assert "\n" not in prequery.stop


def test_chatml_prefix_from_tokenizer_config(tmp_path):
    builder = PreQueryBuilder(load_chat_template(tokenizer_dir(tmp_path, CHATML_TEMPLATE, eos="<|im_end|>")))
    assert builder.build("S").prefix == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
    assert builder.stop == ["<|im_end|>"]


def test_llama3_prefix_and_stops(tmp_path):
    directory = tokenizer_dir(tmp_path, LLAMA3_TEMPLATE, bos="<|begin_of_text|>", eos="<|end_of_text|>")
    prequery = PreQueryBuilder(load_chat_template(directory)).build("You are a sysadmin.")
    assert prequery.prefix == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a sysadmin.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
    )
    assert prequery.stop == ["<|eot_id|>", "<|end_of_text|>"]


def test_named_template_list_uses_the_default(tmp_path):
    directory = tokenizer_dir(tmp_path, LLAMA3_TEMPLATE, bos="<|begin_of_text|>", as_list=True)
    assert PreQueryBuilder(load_chat_template(directory)).build("S").prefix.startswith("<|begin_of_text|><|start_header_id|>system")


def test_template_without_system_role_opens_the_user_turn_with_it(tmp_path):
    directory = tokenizer_dir(tmp_path, NO_SYSTEM_TEMPLATE, bos="<bos>", eos="<eos>")
    prequery = PreQueryBuilder(load_chat_template(directory)).build("Domain brief.")
    assert prequery.prefix == "<bos><start_of_turn>user\nDomain brief.\n\n"
    assert prequery.stop == ["<end_of_turn>", "<eos>"]


def test_jinja_file_is_preferred(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA3_TEMPLATE}))
    assert PreQueryBuilder(load_chat_template(tmp_path)).build("S").prefix.startswith("<|im_start|>system")


def test_missing_template_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no chat template"):
        load_chat_template(tmp_path)


def test_explicit_prefix_overrides():
    prequery = explicit_prequery("<s>[SYS]{system}[/SYS][USER]", ["[/USER]"], "brief")
    assert prequery.prefix == "<s>[SYS]brief[/SYS][USER]" and prequery.stop == ["[/USER]"]
    with pytest.raises(ConfigError, match="{system}"):
        explicit_prequery("no placeholder", None, "brief")
