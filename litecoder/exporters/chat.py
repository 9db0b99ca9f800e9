"""SFT layouts: ShareGPT (LiteCoder's ``conversations`` with ``from``/``value``) and OpenAI
``messages``. Both are one JSON object per line, built from the kept rollouts' trajectories:
the first user message is the agent prompt with the task, each assistant message the
reply as the model wrote it, each later user message the terminal output it got back.

Rollouts of a native tool-calling agent keep their calls: ``messages`` rows carry assistant
``tool_calls`` and one ``tool`` message per call, with the tool list in ``tools`` (the layout
TRL reads for function calling); ShareGPT rows use ``function_call`` and ``observation``
turns with ``tools`` as a JSON string (LLaMA-Factory's layout), and keep only the calls of a
reply that also had text."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .. import atif, hookimpl
from ..tables import write_text_atomic
from .base import Exporter, jsonl, kept_rollouts

if TYPE_CHECKING:
    from ..run import Run

SFT_DIR = "sft"
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


class ShareGPTExporter(Exporter):
    file = "sharegpt.jsonl"

    def row(self, rollout_id: str, pairs: list[tuple[str, str]]) -> dict:
        return {"id": rollout_id, "conversations": [{"from": SHAREGPT_ROLES[role], "value": text} for role, text in pairs]}

    def tool_row(self, rollout_id: str, messages: list[dict], tools: list[dict]) -> dict:
        turns = []
        for message in messages:
            if message.get("tool_calls"):
                calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                         for c in message["tool_calls"]]
                turns.append({"from": "function_call", "value": json.dumps(calls if len(calls) > 1 else calls[0])})
            elif message["role"] == "tool":
                if turns and turns[-1]["from"] == "observation":
                    turns[-1]["value"] += "\n\n" + message["content"]
                else:
                    turns.append({"from": "observation", "value": message["content"]})
            else:
                turns.append({"from": SHAREGPT_ROLES[message["role"]], "value": message["content"] or ""})
        return {"id": rollout_id, "conversations": turns, "tools": json.dumps(tools)}

    def export(self, run: Run) -> dict:
        rows = []
        for rollout in kept_rollouts(run):
            rollout_id, tools = rollout.record["rollout_id"], atif.tools_of(rollout.trajectory)
            if tools:
                messages = atif.tool_messages(rollout.trajectory)
                if messages:
                    rows.append(self.tool_row(rollout_id, messages, tools))
                continue
            pairs = atif.conversation(rollout.trajectory)
            if pairs:
                rows.append(self.row(rollout_id, pairs))
        write_text_atomic(run.path(SFT_DIR) / self.file, jsonl(rows))
        return {"rows": len(rows)}


class MessagesExporter(ShareGPTExporter):
    file = "messages.jsonl"

    def row(self, rollout_id: str, pairs: list[tuple[str, str]]) -> dict:
        return {"id": rollout_id, "messages": [{"role": role, "content": text} for role, text in pairs]}

    def tool_row(self, rollout_id: str, messages: list[dict], tools: list[dict]) -> dict:
        return {"id": rollout_id, "messages": messages, "tools": tools}


@hookimpl
def litecoder_register_exporters(register):
    register("sharegpt", ShareGPTExporter)
    register("messages", MessagesExporter)
