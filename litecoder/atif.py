"""Episodes as ATIF trajectories (Harbor's Agent Trajectory Interchange Format, v1.4).

One file per rollout: a ``user`` step with the first prompt, then one ``agent`` step per
turn. An agent step's ``message`` is the reply exactly as the model wrote it (the text SFT
trains on), its commands are ``tool_calls``, and the message the agent got back is its
``observation``. For a text-reply agent (Terminus) the calls are ``send_keystrokes`` read out
of the reply; for a native tool-calling agent they are the model's own calls, each with its
own result, and the tool list is in ``agent.extra``. So every dataset layout can be rebuilt
from these files alone.
"""

from __future__ import annotations

import json

import jsonschema

from . import __version__
from .agents.base import Episode, Turn

SCHEMA_VERSION = "ATIF-v1.4"
KEYSTROKES = "send_keystrokes"

_METRICS = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": ["integer", "null"]},
        "completion_tokens": {"type": ["integer", "null"]},
        "cached_tokens": {"type": ["integer", "null"]},
        "cost_usd": {"type": ["number", "null"]},
        "prompt_token_ids": {"type": "array", "items": {"type": "integer"}},
        "completion_token_ids": {"type": "array", "items": {"type": "integer"}},
        "logprobs": {"type": "array", "items": {"type": "number"}},
        "extra": {"type": "object"},
    },
    "additionalProperties": False,
}

#: the fields of ATIF v1.4 (root, step, tool call, observation, metrics); extra keys are errors
ATIF_SCHEMA: dict = {
    "type": "object",
    "required": ["schema_version", "session_id", "agent", "steps"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "string", "pattern": r"^ATIF-v1\.\d+$"},
        "session_id": {"type": "string", "minLength": 1},
        "agent": {
            "type": "object",
            "required": ["name", "version"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                           "model_name": {"type": "string"}, "extra": {"type": "object"}},
        },
        "notes": {"type": "string"},
        "continued_trajectory_ref": {"type": "string"},
        "extra": {"type": "object"},
        "final_metrics": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "total_prompt_tokens": {"type": ["integer", "null"]},
                "total_completion_tokens": {"type": ["integer", "null"]},
                "total_cached_tokens": {"type": ["integer", "null"]},
                "total_cost_usd": {"type": ["number", "null"]},
                "total_steps": {"type": ["integer", "null"]},
                "extra": {"type": "object"},
            },
        },
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["step_id", "source", "message"],
                "additionalProperties": False,
                "properties": {
                    "step_id": {"type": "integer", "minimum": 1},
                    "timestamp": {"type": "string"},
                    "source": {"enum": ["system", "user", "agent"]},
                    "model_name": {"type": "string"},
                    "reasoning_effort": {"type": ["string", "number"]},
                    "message": {"type": "string"},
                    "reasoning_content": {"type": "string"},
                    "tool_calls": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["tool_call_id", "function_name", "arguments"],
                            "additionalProperties": False,
                            "properties": {"tool_call_id": {"type": "string"}, "function_name": {"type": "string"},
                                           "arguments": {"type": "object"}},
                        },
                    },
                    "observation": {
                        "type": "object",
                        "required": ["results"],
                        "additionalProperties": False,
                        "properties": {
                            "results": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"source_call_id": {"type": ["string", "null"]},
                                                   "content": {"type": "string"},
                                                   "subagent_trajectory_ref": {"type": "array"}},
                                },
                            }
                        },
                    },
                    "metrics": _METRICS,
                    "extra": {"type": "object"},
                },
            },
        },
    },
}


def validate(trajectory: dict) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``trajectory`` has ATIF's fields and no others;
    step ids must also count up from 1."""
    jsonschema.validate(trajectory, ATIF_SCHEMA)
    ids = [step["step_id"] for step in trajectory["steps"]]
    if ids != list(range(1, len(ids) + 1)):
        raise jsonschema.ValidationError(f"step_id must count up from 1, got {ids[:10]}")


def from_episode(episode: Episode, *, session_id: str, agent_name: str, model: str, started_at: str,
                 extra: dict, tools: list[dict] | None = None) -> dict:
    """The episode as ATIF; ``tools`` (the tool list of a native tool-calling agent) goes into
    ``agent.extra``, which is how exports know the calls are the model's own."""
    steps: list[dict] = [{"step_id": 1, "timestamp": started_at, "source": "user", "message": episode.prompt}]
    for turn in episode.turns:
        step: dict = {"step_id": len(steps) + 1, "timestamp": turn.started_at, "source": "agent",
                                "model_name": model, "message": turn.reply}
        if turn.analysis or turn.plan:
            step["reasoning_content"] = f"{turn.analysis}\n\n{turn.plan}".strip()
        calls, results = _native_calls(turn) if turn.tool_calls else _keystroke_calls(turn)
        if calls:
            step["tool_calls"] = calls
        if results:
            step["observation"] = {"results": results}
        step["metrics"] = {"prompt_tokens": turn.prompt_tokens, "completion_tokens": turn.completion_tokens,
                           "cached_tokens": turn.cached_tokens, "cost_usd": turn.cost_usd}
        step["extra"] = {"task_complete": turn.task_complete, "malformed": turn.malformed, "error": turn.error,
                         "latency_s": turn.latency_s}
        steps.append(step)
    agent_extra: dict = {"framework": "litecoder"}
    if tools:
        agent_extra.update(tool_calling=True, tools=tools)
    turns = episode.turns
    return {
        "schema_version": SCHEMA_VERSION,
        "session_id": session_id,
        "agent": {"name": agent_name, "version": __version__, "model_name": model, "extra": agent_extra},
        "steps": steps,
        "final_metrics": {
            "total_prompt_tokens": sum(t.prompt_tokens or 0 for t in turns),
            "total_completion_tokens": sum(t.completion_tokens or 0 for t in turns),
            "total_cached_tokens": sum(t.cached_tokens or 0 for t in turns),
            "total_cost_usd": round(sum(t.cost_usd for t in turns), 6),
            "total_steps": len(steps),
            "extra": {"stop_reason": episode.stop_reason, "stop_detail": episode.detail, "wall_s": episode.wall_s},
        },
        "extra": extra,
    }


def _keystroke_calls(turn: Turn) -> tuple[list[dict], list[dict]]:
    """A text-reply turn: its commands as ``send_keystrokes`` calls, one observation for all."""
    calls = [{"tool_call_id": f"call_{turn.index}_{i}", "function_name": KEYSTROKES,
              "arguments": {"keystrokes": c.keystrokes, "duration": c.duration}} for i, c in enumerate(turn.commands, 1)]
    if turn.observation is None:
        return calls, []
    return calls, [{"source_call_id": calls[-1]["tool_call_id"] if calls else None, "content": turn.observation}]


def _native_calls(turn: Turn) -> tuple[list[dict], list[dict]]:
    """A tool-calling turn: the model's calls, and what each returned (the correction for each
    when the calls were unusable)."""
    calls = [{"tool_call_id": c["id"], "function_name": c["name"], "arguments": _arguments(c["arguments"])}
             for c in turn.tool_calls]
    outputs = turn.tool_results or ([turn.observation] * len(calls) if turn.observation is not None else [])
    return calls, [{"source_call_id": call["tool_call_id"], "content": output} for call, output in zip(calls, outputs)]


def _arguments(text: str) -> dict:
    """Tool-call arguments as an object; text that is not a JSON object is kept under ``raw``."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": text}


def tool_messages(trajectory: dict) -> list[dict]:
    """A tool-calling trajectory in the OpenAI chat layout: assistant messages with
    ``tool_calls`` (arguments as JSON strings), one ``tool`` message per call, ending with the
    last assistant message."""
    messages: list[dict] = []
    for step in trajectory["steps"]:
        if step["source"] != "agent":
            if not messages:
                messages.append({"role": "user", "content": step["message"]})
            continue
        calls = step.get("tool_calls") or []
        message: dict = {"role": "assistant", "content": (step["message"] or None) if calls else step["message"]}
        if calls:
            message["tool_calls"] = [{"id": c["tool_call_id"], "type": "function",
                                      "function": {"name": c["function_name"], "arguments": json.dumps(c["arguments"])}}
                                     for c in calls]
        messages.append(message)
        for result in (step.get("observation") or {}).get("results") or []:
            if calls:
                messages.append({"role": "tool", "tool_call_id": result.get("source_call_id"), "content": result.get("content") or ""})
            else:
                messages.append({"role": "user", "content": result.get("content") or ""})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    return messages


def tools_of(trajectory: dict) -> list[dict] | None:
    """The tool list of a native tool-calling trajectory (None for text-reply agents)."""
    extra = trajectory.get("agent", {}).get("extra") or {}
    return extra.get("tools") if extra.get("tool_calling") else None


def conversation(trajectory: dict) -> list[tuple[str, str]]:
    """``(role, text)`` pairs, ``user``/``assistant`` alternating, ending with the last reply."""
    pairs: list[tuple[str, str]] = []
    for step in trajectory["steps"]:
        if step["source"] in ("user", "system") and not pairs:
            pairs.append(("user", step["message"]))
        elif step["source"] == "agent":
            if pairs and pairs[-1][0] == "assistant":
                continue  # cannot happen in our files; keeps the alternation for foreign ones
            pairs.append(("assistant", step["message"]))
            results = (step.get("observation") or {}).get("results") or []
            if results:
                pairs.append(("user", "\n".join(r.get("content") or "" for r in results)))
    while pairs and pairs[-1][0] != "assistant":
        pairs.pop()
    return pairs
